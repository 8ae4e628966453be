"""csrc/learn.c == runtime/learning.py (ReferenceLearner) bit for bit, both C kernels, on random
networks, rules and settings; bad input is rejected with a clear error."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from spikewire.config import Chip, CoreConfig, PopulationConfig, fixed_params
from spikewire.core import CoreInputError
from spikewire.events import Events
from spikewire.learner import Learner
from spikewire.learning import (MATRICES, LearningConfig, ReferenceLearner, reference_step_pre,
                                target_modes)
from spikewire.reference import ReferenceCore


def _case(seed: int):
    rng = np.random.default_rng([seed, 77])
    config = CoreConfig(
        n_in=int(rng.integers(3, 30)), n_hid=int(rng.integers(2, 40)), n_out=int(rng.integers(1, 6)),
        shift_in=int(rng.integers(5, 9)), shift_rec=int(rng.integers(3, 7)), shift_out=int(rng.integers(4, 9)),
        t_ref_steps=int(rng.integers(0, 4)), noise_amp=int(rng.choice([0, 300])), noise_seed=seed,
        hidden=PopulationConfig(tau_syn_ms=float(rng.uniform(2, 10)), tau_mem_ms=float(rng.uniform(4, 20))),
        readout=PopulationConfig(tau_syn_ms=float(rng.uniform(2, 10)), tau_mem_ms=float(rng.uniform(4, 20))))
    hid, out = fixed_params(config, Chip(seed=seed, threshold=0.1, leak=0.05, decay=0.1, gain=0.1))
    w = {"in": rng.integers(-30, 64, (config.n_in, config.n_hid)).astype(np.int8),
         "rec": rng.integers(-20, 21, (config.n_hid, config.n_hid)).astype(np.int8),
         "out": rng.integers(-63, 64, (config.n_hid, config.n_out)).astype(np.int8)}
    rule = str(rng.choice(["eprop", "superspike", "readout"]))
    if rule == "readout":
        learn = ("out",)
    else:
        learn = tuple(m for m in MATRICES if rng.random() < 0.7) or ("in",)
    lc = LearningConfig(
        rule=rule, learn=learn, rate_in=int(rng.integers(0, 24)), rate_rec=int(rng.integers(0, 24)),
        rate_out=int(rng.integers(0, 12)), signal_shift=int(rng.integers(0, 12)),
        trace_shift=int(rng.integers(6, 15)), surrogate_log2=int(rng.integers(8, 16)),
        feedback=str(rng.choice(["symmetric", "random", "uniform"])), feedback_seed=seed,
        target_hi=int(rng.integers(0, 8000)), target_lo=int(rng.integers(-8000, -1)),
        weights=str(rng.choice(["shadow", "stochastic"])), sr_seed=seed + 1,
        ss_tau_rise_ms=float(rng.uniform(1, 8)), ss_tau_decay_ms=float(rng.uniform(4, 30)))
    T = int(rng.integers(20, 160))
    counts = rng.poisson(float(rng.uniform(0.05, 1.5)), (T, config.n_in))
    if rng.random() < 0.3:
        counts[T // 2, 0] = 70000 // max(1, T)  # many repeats in one step: saturating traces
    return config, hid, out, w, lc, counts, rng


def _trajectory(config, hid, out, w, counts):
    core = ReferenceCore(config, hid, out)
    core.w_in, core.w_rec, core.w_out = w["in"], w["rec"], w["out"]
    ev = Events.from_raster(counts)
    ip, ch = np.asarray(ev.indptr), np.asarray(ev.channels)
    rec = {k: [] for k in ("z_prev", "v_pre", "refr", "z", "y")}
    for t in range(len(ip) - 1):
        for k, v in zip(rec, reference_step_pre(core, ch[ip[t]:ip[t + 1]])):
            rec[k].append(v)
    return ev, {k: np.array(v) for k, v in rec.items()}


def _split(ev: Events, a: int, b: int) -> Events:
    ip = np.asarray(ev.indptr)
    return Events((ip[a:b + 1] - ip[a]).astype(np.int64), np.asarray(ev.channels)[ip[a]:ip[b]])


@pytest.mark.parametrize("seed", range(40))
def test_c_equals_reference(seed):
    config, hid, out, w, lc, counts, rng = _case(seed)
    ev, tr = _trajectory(config, hid, out, w, counts)
    T = counts.shape[0]
    ref = ReferenceLearner(config, hid, out, lc, w)
    learners = {k: Learner(config, hid, out, lc, w) for k in ("fast", "reference")}
    for k, L in learners.items():
        L.kernel = k
    mid = int(rng.integers(1, T))
    label = int(rng.integers(0, config.n_out))
    modes2 = target_modes(config.n_out, reward=int(rng.choice([1, -1])), decided=label)
    for a, b, modes in ((0, mid, target_modes(config.n_out, label=label)), (mid, T, modes2)):
        ref.set_target(modes)
        for t in range(a, b):
            ref.step(counts[t], tr["z_prev"][t], tr["v_pre"][t], tr["refr"][t], tr["z"][t], tr["y"][t])
        for L in learners.values():
            L.set_target(modes)
            L.run(_split(ev, a, b), tr["z"][a:b], tr["v_pre"][a:b], tr["refr"][a:b], tr["y"][a:b])
    for name, L in learners.items():
        for m in MATRICES:
            assert np.array_equal(L.acc(m), ref.acc[m]), (name, m)
        for m in ref.trace_matrices:
            for kind in ("eI", "eV", "FI", "FV"):
                assert np.array_equal(L.trace(m, kind), getattr(ref, kind)[m]), (name, m, kind)
        assert np.array_equal(L.trace("out", "zV"), ref.zV) and np.array_equal(L.trace("out", "zI"), ref.zI)
    fresh = ReferenceLearner(config, hid, out, lc, w)
    moved = [m for m in lc.learn if not np.array_equal(ref.acc[m], fresh.acc[m])]
    new = ref.commit()
    for name, L in learners.items():
        got = L.commit()
        assert set(got) == set(new)
        for m in new:
            assert np.array_equal(got[m], new[m]), (name, m)
        assert L.counters == (T, 1)
    assert moved, "no accumulator changed: the case exercised nothing"


def test_saturation_is_reached_and_matches():
    """trace_shift 14 and repeated events drive eI/eV/FI/FV to the int16 rails; C == numpy there."""
    config = CoreConfig(n_in=4, n_hid=6, n_out=2, shift_in=8, t_ref_steps=0, hidden=PopulationConfig(tau_mem_ms=1.5),
                        readout=PopulationConfig(tau_syn_ms=20.0, tau_mem_ms=1.5))
    hid, out = fixed_params(config, Chip(seed=5, decay=0.1))
    rng = np.random.default_rng(3)
    w = {"in": rng.integers(20, 64, (4, 6)).astype(np.int8), "rec": np.zeros((6, 6), np.int8),
         "out": rng.integers(-63, 64, (6, 2)).astype(np.int8)}
    lc = LearningConfig(learn=("in", "out"), trace_shift=14, surrogate_log2=15, rate_in=0, rate_out=0,
                        signal_shift=0)
    counts = rng.poisson(12.0, (80, 4))
    ev, tr = _trajectory(config, hid, out, w, counts)
    ref = ReferenceLearner(config, hid, out, lc, w)
    ref.set_target(target_modes(2, label=1))
    hit = {k: False for k in ("eI", "eV", "FI", "FV")}
    for t in range(80):
        ref.step(counts[t], tr["z_prev"][t], tr["v_pre"][t], tr["refr"][t], tr["z"][t], tr["y"][t])
        for k in hit:
            hit[k] |= bool((np.abs(getattr(ref, k)["in"]) >= 32767).any())
    assert all(hit.values()), hit
    assert (np.abs(ref.acc["in"]) == 63 << 16).any()        # the accumulator clamp too
    for kernel in ("fast", "reference"):
        L = Learner(config, hid, out, lc, w)
        L.kernel = kernel
        L.set_target(target_modes(2, label=1))
        L.run(ev, tr["z"], tr["v_pre"], tr["refr"], tr["y"])
        for m in MATRICES:
            assert np.array_equal(L.acc(m), ref.acc[m])
        for k in hit:
            assert np.array_equal(L.trace("in", k), getattr(ref, k)["in"])


def _small():
    config = CoreConfig(n_in=3, n_hid=4, n_out=2)
    hid, out = fixed_params(config)
    w = {"in": np.zeros((3, 4), np.int8), "rec": np.zeros((4, 4), np.int8), "out": np.zeros((4, 2), np.int8)}
    return config, hid, out, w


def test_bad_input_is_rejected_and_changes_nothing():
    config, hid, out, w = _small()
    L = Learner(config, hid, out, LearningConfig(learn=("in", "out")), w)
    T = 3
    ev = Events(np.array([0, 1, 1, 2], np.int64), np.array([0, 2], np.int32))
    z = np.zeros((T, 4), np.uint8)
    v = np.zeros((T, 4), np.int16)
    y = np.zeros((T, 2), np.int16)
    with pytest.raises(CoreInputError, match="channel id out of range"):
        L.run(Events(ev.indptr, np.array([0, 3], np.int32)), z, v, z, y)
    bad_z = z.copy()
    bad_z[1, 2] = 2
    with pytest.raises(CoreInputError, match="0 or 1"):
        L.run(ev, bad_z, v, z, y)
    with pytest.raises(CoreInputError, match="indptr"):
        L.run(Events(np.array([0, 2, 1, 2], np.int64), ev.channels), z, v, z, y)
    with pytest.raises(ValueError, match="shape"):
        L.run(ev, z[:2], v, z, y)
    assert L.counters == (0, 0)
    with pytest.raises(CoreInputError, match="-1, 0 or 1"):
        L.set_target(np.array([2, 0], np.int8))
    with pytest.raises(ValueError, match="-63..63"):
        L.set_weights("in", np.full((3, 4), 64))
    with pytest.raises(CoreInputError, match="clamp range"):
        L.set_acc("in", np.full((3, 4), 64 << 16, np.int32))
    with pytest.raises(ValueError, match="unknown trace"):
        L.trace("out", "FV")


def test_c_validates_config():
    """Direct C callers get a status for a bad config (the Python config would refuse it first)."""
    from spikewire._spikewire_c import ffi, lib
    config, hid, out, w = _small()
    c = ffi.new("sw_learn_config *")
    c.n_in, c.n_hid, c.n_out = 3, 4, 2
    A = np.full(4, 40000, np.int32)
    ok = np.full(4, 1000, np.int32)
    g = np.full(2, 16384, np.int32)
    c.pre_A, c.pre_G = ffi.from_buffer("int32_t[]", A), ffi.from_buffer("int32_t[]", ok)
    c.g_hid, c.v_th, c.g_out = ffi.from_buffer("int32_t[]", ok), ffi.from_buffer("int32_t[]", ok), ffi.from_buffer("int32_t[]", g)
    c.surrogate_log2, c.target_hi, c.target_lo = 12, 100, -100
    pp = ffi.new("sw_learn **")
    assert lib.sw_learn_create(c, pp) == lib.SW_E_PARAM
    assert b"presynaptic filter" in ffi.string(lib.sw_learn_last_error(ffi.NULL))
    A[:] = 1000
    c.rule, c.learn_mask = lib.SW_LEARN_READOUT, lib.SW_LEARN_MASK_IN
    assert lib.sw_learn_create(c, pp) == lib.SW_E_PARAM
    c.learn_mask = lib.SW_LEARN_MASK_OUT
    assert lib.sw_learn_create(c, pp) == lib.SW_OK
    assert lib.sw_learn_destroy(pp[0]) == lib.SW_OK
    assert lib.sw_learn_create(ffi.NULL, pp) == lib.SW_E_NULL
    c.eligibility = 2
    assert lib.sw_learn_create(c, pp) == lib.SW_E_PARAM
    assert b"eligibility" in ffi.string(lib.sw_learn_last_error(ffi.NULL))


# -- golden vectors (tests/golden/learn_v1.txt; the C test under qemu reads the same file) ---------
import os  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "golden"))
import make_golden_learn as golden  # noqa: E402


def _golden_expect() -> dict[str, tuple[int, int]]:
    out, name = {}, None
    with open(golden.OUT, encoding="ascii") as f:
        for line in f:
            if line.startswith("case "):
                name = line.split()[1]
            elif line.startswith("expect "):
                a, b = line.split()[1:3]
                out[name] = (int(a, 16), int(b, 16))
    return out


@pytest.mark.parametrize("name,seed,lc,target", golden.CASES, ids=[c[0] for c in golden.CASES])
def test_golden_numpy_and_c(name, seed, lc, target):
    expect = _golden_expect()
    assert name in expect and len(expect) == len(golden.CASES)
    config, hid, out, w, modes, ev, rec, h_acc, h_w = golden.build(seed, lc, target)
    assert (h_acc, h_w) == expect[name]                       # the numpy reference
    for kernel in ("fast", "reference"):
        L = Learner(config, hid, out, lc, w)
        L.kernel = kernel
        L.set_target(modes)
        L.run(ev, rec["z"], rec["v_pre"], rec["refr"], rec["y"])
        L.flush()
        assert golden.acc_hash({m: L.acc(m) for m in MATRICES}) == h_acc
        L.commit()
        assert golden.weight_hash({m: L.weights(m) for m in MATRICES}) == h_w


# -- the events form (eligibility="events", docs/learning.md "The events form") ------------------
def _events_case(seed: int):
    """Short filters (windows of tens of steps) and runs several windows long, so that events are
    credited in the run (the ring's steady path) as well as by flush."""
    rng = np.random.default_rng([seed, 91])
    config = CoreConfig(
        n_in=int(rng.integers(3, 25)), n_hid=int(rng.integers(2, 30)), n_out=int(rng.integers(1, 5)),
        shift_in=int(rng.integers(5, 9)), shift_rec=int(rng.integers(3, 7)), shift_out=int(rng.integers(4, 9)),
        t_ref_steps=int(rng.integers(0, 3)), noise_amp=int(rng.choice([0, 300])), noise_seed=seed,
        hidden=PopulationConfig(tau_syn_ms=float(rng.uniform(0.5, 3)), tau_mem_ms=float(rng.uniform(1, 4))),
        readout=PopulationConfig(tau_syn_ms=float(rng.uniform(0.5, 3)), tau_mem_ms=float(rng.uniform(1, 5))))
    chip = Chip(seed=seed, threshold=0.1, leak=0.05, decay=float(rng.choice([0.0, 0.1])), gain=0.1)
    hid, out = fixed_params(config, chip)
    w = {"in": rng.integers(-30, 64, (config.n_in, config.n_hid)).astype(np.int8),
         "rec": rng.integers(-20, 21, (config.n_hid, config.n_hid)).astype(np.int8),
         "out": rng.integers(-63, 64, (config.n_hid, config.n_out)).astype(np.int8)}
    learn = tuple(m for m in MATRICES if rng.random() < 0.6)
    learn = learn if ("in" in learn or "rec" in learn) else learn + (str(rng.choice(["in", "rec"])),)
    lc = LearningConfig(
        rule=str(rng.choice(["eprop", "superspike"])), learn=learn, eligibility="events",
        rate_in=int(rng.integers(0, 16)), rate_rec=int(rng.integers(0, 16)), rate_out=int(rng.integers(0, 12)),
        signal_shift=int(rng.integers(0, 8)), trace_shift=int(rng.integers(6, 15)),
        surrogate_log2=int(rng.integers(8, 16)), feedback=str(rng.choice(["symmetric", "random", "uniform"])),
        feedback_seed=seed, target_hi=int(rng.integers(0, 8000)), target_lo=int(rng.integers(-8000, -1)),
        weights=str(rng.choice(["shadow", "stochastic"])), sr_seed=seed + 1,
        ss_tau_rise_ms=float(rng.uniform(0.5, 3)), ss_tau_decay_ms=float(rng.uniform(1, 5)))
    T = int(rng.integers(150, 400))
    counts = rng.poisson(float(rng.uniform(0.05, 1.0)), (T, config.n_in))
    if rng.random() < 0.3:
        counts[T // 2, 0] = 70000 // max(1, T)  # many repeats of one channel in one step
    return config, hid, out, w, lc, counts, rng


@pytest.mark.parametrize("seed", range(24))
def test_events_form_c_equals_reference(seed):
    config, hid, out, w, lc, counts, rng = _events_case(seed)
    ev, tr = _trajectory(config, hid, out, w, counts)
    T = counts.shape[0]
    ref = ReferenceLearner(config, hid, out, lc, w)
    assert ref.events and ref.window < T
    learners = {k: Learner(config, hid, out, lc, w) for k in ("fast", "reference")}
    for k, L in learners.items():
        L.kernel = k
    a, b = sorted(int(v) for v in rng.choice(np.arange(1, T), 2, replace=False))
    label = int(rng.integers(0, config.n_out))
    modes2 = target_modes(config.n_out, reward=int(rng.choice([1, -1])), decided=label)
    # three C calls; a flush (the end of a stretch) after the first
    for (s0, s1), modes, flush in (((0, a), target_modes(config.n_out, label=label), True),
                                   ((a, b), modes2, False), ((b, T), modes2, False)):
        ref.set_target(modes)
        for t in range(s0, s1):
            ref.step(counts[t], tr["z_prev"][t], tr["v_pre"][t], tr["refr"][t], tr["z"][t], tr["y"][t])
        for L in learners.values():
            L.set_target(modes)
            L.run(_split(ev, s0, s1), tr["z"][s0:s1], tr["v_pre"][s0:s1], tr["refr"][s0:s1], tr["y"][s0:s1])
        if flush:
            ref.flush()
            for L in learners.values():
                L.flush()
    fresh = ReferenceLearner(config, hid, out, lc, w)
    for stage in ("pending", "flushed"):
        for name, L in learners.items():
            for m in MATRICES:
                assert np.array_equal(L.acc(m), ref.acc[m]), (stage, name, m)
            assert np.array_equal(L.trace("out", "zV"), ref.zV)
        if stage == "pending":
            assert ref.pending, "nothing pending: the flush was not exercised"
        ref.flush()
        for L in learners.values():
            L.flush()
    hidden = [m for m in ("in", "rec") if m in lc.learn]
    assert any(not np.array_equal(ref.acc[m], fresh.acc[m]) for m in hidden), "no hidden accumulator moved"
    new = ref.commit()
    for name, L in learners.items():
        got = L.commit()
        for m in new:
            assert np.array_equal(got[m], new[m]), (name, m)


def test_events_form_tables_and_errors():
    """The kernels are the traces' impulse responses; hidden traces are not kept; flush is a no-op
    in the traces form; a bad form is refused in Python and C."""
    from spikewire.learning import event_tables, impulse_response, tables
    config, hid, out, w = _small()
    lc = LearningConfig(learn=("in", "rec", "out"), eligibility="events")
    ref = ReferenceLearner(config, hid, out, lc, w)
    t = tables(config, hid, out, lc)
    hpre, h = event_tables(t, lc)
    # one isolated event through the traces form gives the same eV, step by step
    L = ReferenceLearner(config, hid, out, dataclasses.replace(lc, eligibility="traces"), w)
    seen = []
    for k in range(hpre.shape[0] + 3):
        x = np.zeros(3, np.int64)
        x[1] = 1 if k == 0 else 0
        L.step(x, np.zeros(4, bool), np.zeros(4, np.int16), np.zeros(4, bool), np.zeros(4, bool), np.zeros(2, np.int16))
        seen.append(L.eV["in"][1].copy())
    seen = np.array(seen)
    assert np.array_equal(seen[:hpre.shape[0]], hpre) and not seen[hpre.shape[0]:].any()
    assert h[0] == t.post_G and h.max() < 1 << 15 and len(h) > 10
    assert list(impulse_response(32768, 1000, 1 << 10)[-2:]) != [0, 0]           # no decay: truncated
    assert len(impulse_response(32768, 1000, 1 << 10)) == 512
    C = Learner(config, hid, out, lc, w)
    with pytest.raises(CoreInputError, match="no per-synapse traces"):
        C.trace("in", "eV")
    Lt = Learner(config, hid, out, LearningConfig(learn=("in", "out")), w)
    Lt.flush()
    assert ref.events and ref.window == hpre.shape[0] + len(h) - 1
    with pytest.raises(ValueError, match="eligibility"):
        LearningConfig(eligibility="lazy")


# -- synaptic intelligence (docs/learning.md "Consolidation") ------------------------------------
def _si_arrays(L, m):
    if isinstance(L, ReferenceLearner):
        return {"prev": L.si_prev[m], "omega": L.si_omega[m], "importance": L.si_importance[m],
                "anchor": L.si_anchor[m]}
    return {k: L.si_state(m, k) for k in ("prev", "omega", "importance", "anchor")}


def _assert_same(ref, learners, lc, where):
    for name, L in learners.items():
        for m in MATRICES:
            assert np.array_equal(L.acc(m), ref.acc[m]), (where, name, m)
            assert np.array_equal(L.weights(m), ref.w[m]), (where, name, m)
        for m in lc.learn:
            got, want = _si_arrays(L, m), _si_arrays(ref, m)
            for k in want:
                assert np.array_equal(got[k], want[k]), (where, name, m, k)


@pytest.mark.parametrize("seed", range(24))
def test_si_c_equals_reference(seed):
    """Four stretches (rounds over the recorded trajectory) with a commit each and consolidations
    after the first and third, strengths and damping drawn at random, every rule, weight mode and
    eligibility form: accumulators, weights and every SI array equal, both C kernels."""
    config, hid, out, w, lc, counts, rng = _case(seed)
    lc = dataclasses.replace(lc, si=True, si_c_log2=int(rng.integers(-4, 12)), si_xi_log2=int(rng.integers(-8, 4)),
                             eligibility=str(rng.choice(["traces", "events"])), rate_in=min(lc.rate_in, 14),
                             rate_rec=min(lc.rate_rec, 14), rate_out=min(lc.rate_out, 8),
                             signal_shift=min(lc.signal_shift, 6))
    ev, tr = _trajectory(config, hid, out, w, counts)
    T = counts.shape[0]
    ref = ReferenceLearner(config, hid, out, lc, w)
    learners = {k: Learner(config, hid, out, lc, w) for k in ("fast", "reference")}
    for k, L in learners.items():
        L.kernel = k
    omega_seen = False
    for r in range(4):
        label = int(rng.integers(0, config.n_out))
        modes = (target_modes(config.n_out, label=label) if r % 2 == 0 else
                 target_modes(config.n_out, reward=-1, decided=label))
        ref.reset_traces()                 # each stretch from rest (the recorded z_prev[0] is 0)
        ref.set_target(modes)
        for t in range(T):
            ref.step(counts[t], tr["z_prev"][t], tr["v_pre"][t], tr["refr"][t], tr["z"][t], tr["y"][t])
        ref.flush()
        ref.commit()
        for L in learners.values():
            L.reset_traces()
            L.set_target(modes)
            L.run(ev, tr["z"], tr["v_pre"], tr["refr"], tr["y"])
            L.flush()
            L.commit()
        omega_seen |= any(ref.si_omega[m].any() for m in lc.learn)
        _assert_same(ref, learners, lc, f"commit {r}")
        if r in (0, 2):
            ref.consolidate()
            for L in learners.values():
                L.consolidate()
            _assert_same(ref, learners, lc, f"consolidate {r}")
    assert omega_seen and any(ref.si_importance[m].any() for m in lc.learn), "no importance: nothing exercised"


def _si_small(weights="shadow", c=0, xi=-2, learn=("in", "out")):
    config = CoreConfig(n_in=5, n_hid=6, n_out=3, shift_in=7, t_ref_steps=1)
    hid, out = fixed_params(config, Chip(seed=3, threshold=0.1))
    rng = np.random.default_rng(8)
    w = {"in": rng.integers(0, 64, (5, 6)).astype(np.int8), "rec": np.zeros((6, 6), np.int8),
         "out": rng.integers(-40, 41, (6, 3)).astype(np.int8)}
    lc = LearningConfig(learn=learn, rate_in=18, rate_out=12, signal_shift=4, weights=weights, si=True,
                        si_c_log2=c, si_xi_log2=xi)
    counts = rng.poisson(0.8, (60, 5))
    ev, tr = _trajectory(config, hid, out, w, counts)
    return config, hid, out, w, lc, ev, tr


def _stretch(L, ev, tr, label, n_out):
    L.reset_traces()
    L.set_target(target_modes(n_out, label=label))
    L.run(ev, tr["z"], tr["v_pre"], tr["refr"], tr["y"])
    L.commit()


def test_si_without_importance_learns_as_without_si():
    """Omega = 0 (the first task): the pull is zero, learning is that of si = false; omega is the
    path integral u * d of every commit, >= 0 on a path without pull."""
    config, hid, out, w, lc, ev, tr = _si_small()
    plain = Learner(config, hid, out, dataclasses.replace(lc, si=False), w)
    si = Learner(config, hid, out, lc, w)
    steps = {m: [] for m in lc.learn}
    for label in (0, 1, 0):
        prev = {m: si.acc(m).astype(np.int64) for m in lc.learn}
        _stretch(plain, ev, tr, label, 3)
        _stretch(si, ev, tr, label, 3)
        for m in lc.learn:
            steps[m].append(si.acc(m).astype(np.int64) - prev[m])
    for m in MATRICES:
        assert np.array_equal(plain.acc(m), si.acc(m)) and np.array_equal(plain.weights(m), si.weights(m))
    for m in lc.learn:
        want = sum(((u * u + (1 << 7)) >> 8) for u in steps[m])
        assert np.array_equal(si.si_state(m, "omega"), want) and want.any()
        assert np.array_equal(si.si_state(m, "prev"), si.acc(m))
        assert np.array_equal(si.si_state(m, "anchor"), w[m].astype(np.int64) << 16)
        assert not si.si_state(m, "importance").any()


def test_consolidate_formula_and_full_pull():
    """Omega += omega * 2^16 // (rhu(Delta^2, 16) + xi) (checked in float too); then with
    c Omega >= 1 a second task's commits leave the important synapses exactly at their anchor,
    and with a weaker c they end between the anchor and where they would go without SI."""
    for weights in ("shadow", "stochastic"):
        config, hid, out, w, lc, ev, tr = _si_small(weights=weights)
        L = Learner(config, hid, out, lc, w)
        for label in (0, 0, 1):
            _stretch(L, ev, tr, label, 3)
        th = {m: (L.acc(m).astype(np.int64) if weights == "shadow" else
                  (L.weights(m).astype(np.int64) << 16) + L.acc(m)) for m in lc.learn}
        om = {m: L.si_state(m, "omega").astype(np.int64) for m in lc.learn}
        L.consolidate()
        for m in lc.learn:
            delta = th[m] - (w[m].astype(np.int64) << 16)
            den = delta * delta + (1 << 30)
            imp = L.si_state(m, "importance")
            assert np.array_equal(imp, (np.maximum(om[m], 0) << 24) // den)
            f = np.maximum(om[m], 0) / 2**24 / ((delta / 2**16) ** 2 + 0.25)
            assert np.allclose(imp / 2**16, f, atol=1e-3, rtol=1e-3) and imp.any()
            assert np.array_equal(L.si_state(m, "anchor"), th[m]) and not L.si_state(m, "omega").any()
        if weights == "stochastic":
            continue
        # task 2 (another label) with three strengths: full pull, some pull, none
        finals = {}
        state = {m: {k: L.si_state(m, k) for k in ("prev", "omega", "importance", "anchor")} for m in lc.learn}
        for c in (16, -2, None):
            L2 = Learner(config, hid, out, dataclasses.replace(lc, si=c is not None, si_c_log2=c or 0), w)
            for m in lc.learn:
                L2.set_acc(m, L.acc(m))
                if c is not None:
                    for k, v in state[m].items():
                        L2.set_si_state(m, k, v)
            for label in (2, 2):
                _stretch(L2, ev, tr, label, 3)
            finals[c] = {m: L2.acc(m).astype(np.int64) for m in lc.learn}
        for m in lc.learn:
            anchor = state[m]["anchor"].astype(np.int64)
            full = state[m]["importance"] >= 1       # c = 2^16: k = min(Omega * 2^16, 1.0) = 1.0
            assert full.any()
            assert np.array_equal(finals[16][m][full], anchor[full])
            free = np.abs(finals[None][m] - anchor)
            mid = np.abs(finals[-2][m] - anchor)
            moved = free > 0
            assert (mid[moved] <= free[moved]).all() and (mid[moved] < free[moved]).any()


def test_si_errors():
    config, hid, out, w, lc, ev, tr = _si_small()
    off = Learner(config, hid, out, dataclasses.replace(lc, si=False), w)
    with pytest.raises(CoreInputError, match="si = 1"):
        off.consolidate()
    with pytest.raises(CoreInputError, match="si is off"):
        off.si_state("in", "omega")
    L = Learner(config, hid, out, lc, w)
    with pytest.raises(CoreInputError, match="does not learn"):
        L.si_state("rec", "omega")
    with pytest.raises(CoreInputError, match="outside its range"):
        L.set_si_state("in", "importance", np.full((5, 6), -1))
    with pytest.raises(CoreInputError, match="outside its range"):
        L.set_si_state("in", "anchor", np.full((5, 6), 64 << 16))
    with pytest.raises(ValueError, match="si state"):
        L.si_state("in", "Omega")
    with pytest.raises(ValueError, match="si_c_log2"):
        L.set_si(17, 0)
    with pytest.raises(ValueError, match="si_xi_log2"):
        LearningConfig(si=True, si_xi_log2=9)
    with pytest.raises(ValueError, match="si must be"):
        LearningConfig(si=1)
    L.set_si(3, -5)
    assert (L.lc.si_c_log2, L.lc.si_xi_log2) == (3, -5)
    with pytest.raises(ValueError, match="needs si"):
        ReferenceLearner(config, hid, out, dataclasses.replace(lc, si=False), w).consolidate()


def _golden_si_expect() -> dict[str, tuple[int, int, int]]:
    out, name = {}, None
    with open(golden.OUT_SI, encoding="ascii") as f:
        for line in f:
            if line.startswith("case "):
                name = line.split()[1]
            elif line.startswith("expect "):
                out[name] = tuple(int(x, 16) for x in line.split()[1:4])
    return out


@pytest.mark.parametrize("name,seed,lc,target", golden.SI_CASES, ids=[c[0] for c in golden.SI_CASES])
def test_golden_si_numpy_and_c(name, seed, lc, target):
    """tests/golden/learn_si_v1.txt: four stretches with two consolidations; numpy and both C kernels."""
    expect = _golden_si_expect()
    assert name in expect and len(expect) == len(golden.SI_CASES)
    config, hid, out, w, modes, ev, rec, h_acc, h_w, h_si = golden.build_si(seed, lc, target)
    assert (h_acc, h_w, h_si) == expect[name]                 # the numpy reference
    for kernel in ("fast", "reference"):
        L = Learner(config, hid, out, lc, w)
        L.kernel = kernel
        golden.si_rounds(L, modes, ev, rec)
        assert golden.acc_hash({m: L.acc(m) for m in MATRICES}) == h_acc
        assert golden.weight_hash({m: L.weights(m) for m in MATRICES}) == h_w
        assert golden.si_hash(L) == h_si
