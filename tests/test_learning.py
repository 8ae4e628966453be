"""runtime/learning.py: the configuration, the integer reference of the rules, and its checks
against the float64 rules and BPTT (tools/eprop.py).  docs/learning.md is the spec."""
from __future__ import annotations

import numpy as np
import pytest

import torch  # required (tests/run.sh installs it)

from spikewire.config import Chip, CoreConfig, fixed_params
from spikewire.events import Events
from spikewire.learning import (ACC_MAX, TARGET_HI, TARGET_LO, TARGET_NONE, LearningConfig,
                                ReferenceLearner, feedback_matrix, random_feedback, readout_error,
                                reference_step_pre, rhu_shr, run_reference, surrogate, target_modes)
from spikewire.reference import ReferenceCore
from spikewire.tools.eprop import (FloatNet, bptt_gradient, cosine, float_eprop, random_problem,
                                   recurrent_cosines, rel_err)

torch.set_num_threads(1)


# -- configuration ------------------------------------------------------------
@pytest.mark.parametrize("kw, msg", [
    (dict(rule="stdp"), "learning rule"),
    (dict(learn=("in", "hidden")), "unknown matrices"),
    (dict(learn=("in", "in")), "twice"),
    (dict(rule="readout", learn=("in", "out")), "learns only 'out'"),
    (dict(rate_in=31), "rate_in"),
    (dict(rate_out=-1), "rate_out"),
    (dict(signal_shift=1.5), "signal_shift"),
    (dict(trace_shift=15), "trace_shift"),
    (dict(surrogate_log2=7), "surrogate_log2"),
    (dict(feedback="transpose"), "feedback"),
    (dict(feedback_seed=-1), "feedback_seed"),
    (dict(target_hi=40000), "target_hi"),
    (dict(target_hi=100, target_lo=100), "below target_hi"),
    (dict(weights="float"), "weights"),
    (dict(ss_tau_rise_ms=0), "ss_tau_rise_ms"),
    (dict(rate_in=True), "rate_in"),
    (dict(eligibility="lazy"), "eligibility"),
])
def test_config_rejects_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        LearningConfig(**kw)


def test_config_canonical_and_round_trip():
    lc = LearningConfig(learn="out,in")
    assert lc.learn == ("in", "out")
    assert LearningConfig.from_dict(lc.to_dict()) == lc
    with pytest.raises(ValueError, match="unknown learning config keys"):
        LearningConfig.from_dict({"rule": "eprop", "eta": 0.1})
    assert LearningConfig.rate(2.0**-12) == 12 and LearningConfig.rate(1.0) == 0
    for bad in (0.3, 0, -0.5, 4.0):
        with pytest.raises(ValueError, match="power of two"):
            LearningConfig.rate(bad)


# -- tables and helpers ------------------------------------------------------------
def test_random_feedback_is_seeded_and_bounded():
    b = random_feedback(7, 50, 10)
    assert b.dtype == np.int8 and b.min() == -31 and b.max() == 31
    assert np.array_equal(b, random_feedback(7, 50, 10))
    assert not np.array_equal(b, random_feedback(8, 50, 10))
    w_out = np.arange(-10, 10, dtype=np.int8).reshape(5, 4)
    assert np.array_equal(feedback_matrix(LearningConfig(feedback="symmetric"), w_out), w_out)
    assert (feedback_matrix(LearningConfig(feedback="uniform"), w_out) == 31).all()


def test_rhu_shr_rounds_half_up():
    x = np.array([-6, -5, -4, -3, -2, -1, 0, 1, 2, 3, 5, 6], np.int64)
    assert rhu_shr(x, 2).tolist() == [-1, -1, -1, -1, 0, 0, 0, 0, 1, 1, 1, 2]
    assert rhu_shr(x, 0).tolist() == x.tolist()


def test_surrogate_values():
    th = np.full(6, 4096, np.int64)
    v = np.array([4096, 4096 + 2048, 4096 - 4095, 4096 + 4096, -30000, 4096])
    refr = np.array([False, False, False, False, False, True])
    assert surrogate(v, th, refr, 12).tolist() == [256, 128, 0, 0, 0, 0]
    assert surrogate(v, th, refr, 13).tolist() == [256, 192, 128, 128, 0, 0]


def test_target_modes_and_error():
    assert target_modes(4).tolist() == [TARGET_NONE] * 4
    assert target_modes(4, label=2).tolist() == [TARGET_LO, TARGET_LO, TARGET_HI, TARGET_LO]
    assert target_modes(4, reward=1, decided=1).tolist() == target_modes(4, label=1).tolist()
    assert target_modes(4, reward=-1, decided=3).tolist() == [0, 0, 0, TARGET_LO]
    for kw in (dict(label=4), dict(label=-1), dict(reward=0, decided=1), dict(reward=1),
               dict(label=1, reward=1, decided=1)):
        with pytest.raises(ValueError):
            target_modes(4, **kw)
    y = np.array([5000, 3000, -1000, -3000], np.int16)
    modes = np.array([TARGET_HI, TARGET_HI, TARGET_LO, TARGET_LO], np.int8)
    assert readout_error(y, modes, 4096, -2048).tolist() == [0, -1096, 1048, 0]


# -- the reference -------------------------------------------------------------
def _problem(seed, recurrent=True, T=200, rec_max=8):
    config, hid, out, w, x, label = random_problem(seed, recurrent=recurrent, T=T, rec_max=rec_max)
    ev = Events.from_raster(x)
    return config, hid, out, w, x, label, np.asarray(ev.indptr), np.asarray(ev.channels)


def _ref_core(config, hid, out, w):
    core = ReferenceCore(config, hid, out)
    core.w_in, core.w_rec, core.w_out = w["in"], w["rec"], w["out"]
    return core


def test_step_pre_leaves_the_core_unchanged_and_gives_the_pre_reset_membrane():
    config, hid, out, w, x, label, indptr, ch = _problem(1)
    a, b = _ref_core(config, hid, out, w), _ref_core(config, hid, out, w)
    n_spk = 0
    for t in range(len(indptr) - 1):
        c = ch[indptr[t]:indptr[t + 1]]
        ref_before = b.h_ref.copy()
        z_prev, v_pre, refr, z, y = reference_step_pre(b, c)
        za, va, ya, _ = a.step(c)
        assert np.array_equal(z, za.astype(bool)) and np.array_equal(y, ya)
        assert np.array_equal(refr, ref_before > 0)
        free = ~refr & ~z
        assert np.array_equal(v_pre[free], va[free])          # no reset: the same membrane
        assert (v_pre[z] >= hid.v_th[z]).all()                # spiked: at or above threshold
        n_spk += int(z.sum())
    assert n_spk > 50


def _learner(seed, lc, recurrent=True, label=True):
    config, hid, out, w, x, lab, indptr, ch = _problem(seed, recurrent)
    L = ReferenceLearner(config, hid, out, lc, w)
    if label:
        L.set_target(target_modes(config.n_out, label=lab))
    rec = run_reference(_ref_core(config, hid, out, w), L, indptr, ch)
    return L, rec, (config, hid, out, w, x, lab)


def test_without_target_nothing_learns_but_traces_run():
    L, rec, (config, hid, out, w, *_) = _learner(2, LearningConfig(learn=("in", "rec", "out")), label=False)
    for m in ("in", "rec", "out"):
        assert np.array_equal(L.acc[m], w[m].astype(np.int64) << 16)
    assert np.abs(L.FV["in"]).max() > 0 and np.abs(L.eV["rec"]).max() > 0 and np.abs(L.zV).max() > 0
    L2, _, _ = _learner(2, LearningConfig(learn=("out",)), label=False)
    assert np.abs(L2.eV["in"]).max() == 0 and np.abs(L2.FV["rec"]).max() == 0   # not kept
    L.commit()
    for m in ("in", "rec", "out"):
        assert np.array_equal(L.w[m], w[m])


@pytest.mark.parametrize("rule", ["eprop", "superspike"])
@pytest.mark.parametrize("seed", [0, 3])
def test_integer_rule_agrees_with_float64_rule(rule, seed):
    """The integer traces and updates follow the float64 rule on the same trajectory (no saturation)."""
    lc = LearningConfig(rule=rule, learn=("in", "rec", "out"), rate_in=12, rate_rec=12, rate_out=10,
                        signal_shift=8, weights="stochastic")   # the accumulators are the gradient
    L, rec, (config, hid, out, w, x, lab) = _learner(seed, lc)
    net = FloatNet.from_fixed(config, hid, out)
    traj = {"v": rec["v_pre"], "refr": rec["refr"], "z": rec["z"], "y": rec["y"]}
    g = float_eprop(net, w, x, traj, lc, L.modes, hid, config)
    for m in ("in", "rec", "out"):
        d = L.acc[m]
        assert np.abs(d).max() < ACC_MAX["stochastic"]     # no clamping in this check
        assert np.abs(d).max() > 1000
        assert cosine(-d, g[m]) > 0.9999, m
    assert np.abs(L.eI["in"]).max() < 32767 and np.abs(L.FI["in"]).max() < 32767


@pytest.mark.parametrize("rule", ["eprop", "superspike"])
@pytest.mark.parametrize("seed", [0, 3])
def test_events_form_agrees_with_float64_rule(rule, seed):
    """The events form, flushed at the end of the sample, follows the float64 rule too."""
    lc = LearningConfig(rule=rule, learn=("in", "rec", "out"), rate_in=12, rate_rec=12, rate_out=10,
                        signal_shift=8, weights="stochastic", eligibility="events")
    L, rec, (config, hid, out, w, x, lab) = _learner(seed, lc)
    assert L.pending
    L.flush()
    net = FloatNet.from_fixed(config, hid, out)
    traj = {"v": rec["v_pre"], "refr": rec["refr"], "z": rec["z"], "y": rec["y"]}
    g = float_eprop(net, w, x, traj, lc, L.modes, hid, config)
    for m in ("in", "rec", "out"):
        d = L.acc[m]
        assert np.abs(d).max() < ACC_MAX["stochastic"] and np.abs(d).max() > 1000
        assert cosine(-d, g[m]) > 0.9999, m


def test_eprop_equals_bptt_without_recurrence():
    lc = LearningConfig(learn=("in", "rec", "out"))
    worst = 0.0
    for s in range(6):
        config, hid, out, w, x, label = random_problem(s, recurrent=False)
        net = FloatNet.from_fixed(config, hid, out)
        modes = target_modes(config.n_out, label=label)
        g_b, rec = bptt_gradient(net, w, x, lc, modes)
        g_e = float_eprop(net, w, x, rec, lc, modes)
        assert rec["z"].sum() > 20 and rec["refr"].sum() > 0
        for m in ("in", "rec", "out"):
            assert np.linalg.norm(g_b[m]) > 0
            worst = max(worst, rel_err(g_e[m], g_b[m]))
    assert worst <= 1e-5


def test_eprop_is_close_to_bptt_with_weak_recurrence():
    """With recurrence e-prop drops the indirect paths; docs/learning.md has the table."""
    c = recurrent_cosines(8, seed=1, rec_max=4)
    assert len(c) == 8 and np.mean(c) > 0.9


def test_commit_shadow_rounds_half_up_and_clamps():
    config = CoreConfig(n_in=2, n_hid=3, n_out=2)
    hid, out = fixed_params(config)
    w = {"in": np.zeros((2, 3), np.int8), "rec": np.zeros((3, 3), np.int8), "out": np.zeros((3, 2), np.int8)}
    L = ReferenceLearner(config, hid, out, LearningConfig(learn=("in",)), w)
    L.acc["in"][:] = np.array([[(5 << 16) + 32768, (5 << 16) + 32767, -(5 << 16) - 32768],
                              [-(5 << 16) - 32769, 63 << 16, -(63 << 16)]])
    L.acc["rec"][:] = 7 << 16        # rec does not learn: unchanged by commit
    new = L.commit()
    assert set(new) == {"in"}
    assert new["in"].tolist() == [[6, 5, -5], [-6, 63, -63]]
    assert (L.w["rec"] == 0).all()


def test_commit_stochastic_is_unbiased_and_seeded():
    config = CoreConfig(n_in=100, n_hid=100, n_out=2)
    hid, out = fixed_params(config)
    w = {"in": np.zeros((100, 100), np.int8), "rec": np.zeros((100, 100), np.int8),
         "out": np.zeros((100, 2), np.int8)}

    def one(seed):
        L = ReferenceLearner(config, hid, out, LearningConfig(learn=("in",), weights="stochastic", sr_seed=seed), w)
        L.acc["in"][:50] = int(0.3 * 65536)
        L.acc["in"][50:] = -int(1.75 * 65536)
        L.commit()
        assert (L.acc["in"] == 0).all()
        return L.w["in"].astype(np.int64)

    a = one(1)
    assert set(np.unique(a[:50])) == {0, 1} and set(np.unique(a[50:])) == {-2, -1}
    assert abs(a[:50].mean() - 0.3) < 0.02 and abs(a[50:].mean() + 1.75) < 0.02
    assert np.array_equal(a, one(1)) and not np.array_equal(a, one(2))


@pytest.mark.parametrize("rule,learn", [("eprop", ("in", "out")), ("superspike", ("in", "rec")),
                                        ("readout", ("out",))])
def test_learning_moves_the_label_unit_up(rule, learn):
    """Replaying one sample with its label: the label unit's margin over the others grows."""
    config, hid, out, w, x, lab, indptr, ch = _problem(4, recurrent=True, T=200)
    lc = LearningConfig(rule=rule, learn=learn, rate_in=12, rate_rec=12, rate_out=8, signal_shift=8)
    L = ReferenceLearner(config, hid, out, lc, w)
    L.set_target(target_modes(config.n_out, label=lab))
    margins = []
    for _ in range(4):
        core = _ref_core(config, hid, out, L.w)
        rec = run_reference(core, L, indptr, ch)
        y = rec["y"].astype(np.int64)
        margins.append(float((y[:, lab] - np.delete(y, lab, axis=1).max(axis=1)).mean()))
        L.reset_traces()
        L.commit()
    assert margins[-1] > margins[0] + 200, margins
