"""LearningCore (C core + C learner, stretch by stretch, weights committed into the core) ==
ReferenceLearningCore (ReferenceCore + ReferenceLearner) bit for bit over random streams, with
learning switched on and off, targets changing and commits deferred in the middle of a stream."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from spikewire.config import Chip, CoreConfig, PopulationConfig, fixed_params
from spikewire.core import Core, CoreInputError
from spikewire.events import Events
from spikewire.learncore import LearningCore
from spikewire.learner import Learner
from spikewire.learning import MATRICES, LearningConfig, ReferenceLearningCore, target_modes
from spikewire.reference import ReferenceCore


def _net(rng, seed):
    config = CoreConfig(
        n_in=int(rng.integers(3, 24)), n_hid=int(rng.integers(2, 32)), n_out=int(rng.integers(1, 5)),
        shift_in=int(rng.integers(5, 9)), shift_rec=int(rng.integers(3, 7)), shift_out=int(rng.integers(4, 9)),
        t_ref_steps=int(rng.integers(0, 4)), noise_amp=int(rng.choice([0, 300])), noise_seed=seed,
        hidden=PopulationConfig(tau_syn_ms=float(rng.uniform(2, 10)), tau_mem_ms=float(rng.uniform(4, 20))),
        readout=PopulationConfig(tau_syn_ms=float(rng.uniform(2, 10)), tau_mem_ms=float(rng.uniform(4, 20))))
    hid, out = fixed_params(config, Chip(seed=seed, threshold=0.1, leak=0.05, decay=0.1, gain=0.1))
    w = {"in": rng.integers(-30, 64, (config.n_in, config.n_hid)).astype(np.int8),
         "rec": rng.integers(-20, 21, (config.n_hid, config.n_hid)).astype(np.int8),
         "out": rng.integers(-63, 64, (config.n_hid, config.n_out)).astype(np.int8)}
    return config, hid, out, w


def _lc(rng, seed):
    rule = str(rng.choice(["eprop", "superspike", "readout"]))
    learn = ("out",) if rule == "readout" else (tuple(m for m in MATRICES if rng.random() < 0.7) or ("in",))
    return LearningConfig(
        rule=rule, learn=learn, rate_in=int(rng.integers(4, 14)), rate_rec=int(rng.integers(4, 14)),
        rate_out=int(rng.integers(2, 10)), signal_shift=int(rng.integers(0, 8)),
        trace_shift=int(rng.integers(8, 13)), surrogate_log2=int(rng.integers(10, 14)),
        feedback=str(rng.choice(["symmetric", "random", "uniform"])), feedback_seed=seed,
        weights=str(rng.choice(["shadow", "stochastic"])), sr_seed=seed + 3,
        eligibility="traces" if rule == "readout" or rng.random() < 0.5 else "events")


def _pair(config, hid, out, w, lc, kernel="fast"):
    core = Core(config, params=(hid, out))
    ref = ReferenceCore(config, hid, out)
    for m in MATRICES:
        core.set_weights(m, w[m])
    ref.w_in, ref.w_rec, ref.w_out = w["in"].copy(), w["rec"].copy(), w["out"].copy()
    return LearningCore(core, lc, kernel=kernel), ReferenceLearningCore(ref, hid, out, lc)


def _same_state(lcore, rcore, where):
    for m in MATRICES:
        assert np.array_equal(lcore.core.get_weights(m), getattr(rcore.core, "w_" + m)), (where, m)
        assert np.array_equal(lcore.learner.acc(m), rcore.learner.acc[m]), (where, m)
    assert np.array_equal(lcore.core.membrane(), rcore.core.h_V), where


@pytest.mark.parametrize("seed", range(24))
def test_learning_core_equals_reference(seed):
    rng = np.random.default_rng([seed, 1010])
    config, hid, out, w = _net(rng, seed)
    lc = _lc(rng, seed)
    kernel = "fast" if seed % 3 else "reference"
    lcore, rcore = _pair(config, hid, out, w, lc, kernel)
    rate = float(rng.uniform(0.1, 1.5))
    learned_stretches = 0
    for s in range(int(rng.integers(6, 14))):
        T = int(rng.integers(0, 60))
        counts = rng.poisson(rate, (T, config.n_in))
        ev = Events.from_raster(counts) if T else Events(np.zeros(1, np.int64), np.zeros(0, np.int32))
        if rng.random() < 0.35 or s == 1:                        # switch learning on or off mid-stream
            on = not lcore.learning if s != 1 else True
            lcore.set_learning(on)
            rcore.set_learning(on)
            if not on:                                           # the stretch ended: nothing pending
                assert not getattr(rcore.learner, "pending", [])
                _same_state(lcore, rcore, ("off", s))
        if rng.random() < 0.5:
            kind = rng.integers(0, 3)
            modes = (target_modes(config.n_out, label=int(rng.integers(config.n_out))) if kind == 0 else
                     target_modes(config.n_out, reward=int(rng.choice([1, -1])),
                                  decided=int(rng.integers(config.n_out))) if kind == 1 else
                     np.zeros(config.n_out, np.int8))
            lcore.set_target(modes)
            rcore.set_target(modes)
        commit = bool(rng.random() < 0.8)
        got = lcore.run(ev, commit=commit)
        want = rcore.run(np.asarray(ev.indptr), np.asarray(ev.channels), commit=commit)
        learned_stretches += lcore.learning and T > 0
        assert got.spikes.shape[0] == T
        if T:
            assert np.array_equal(got.spikes, np.stack([o.spikes for o in want])), s
            assert np.array_equal(got.out_v, np.stack([o.out_v for o in want])), s
            assert np.array_equal(got.hid_v_pre, np.stack([o.hid_v_pre for o in want])), s
        _same_state(lcore, rcore, s)
        if rng.random() < 0.15:
            lcore.reset()
            rcore.reset()
    assert learned_stretches > 0


def test_learning_changes_weights_and_off_is_the_plain_core():
    """With a label the weights move; with learning off the outputs equal a plain core's."""
    rng = np.random.default_rng(7)
    config, hid, out, w = _net(rng, 7)
    lc = LearningConfig(rule="eprop", learn=("in", "rec", "out"), rate_in=6, rate_rec=6, rate_out=4)
    lcore, _ = _pair(config, hid, out, w, lc)
    plain = Core(config, params=(hid, out))
    for m in MATRICES:
        plain.set_weights(m, w[m])
    ev = Events.from_raster(rng.poisson(0.8, (80, config.n_in)))
    a, b = lcore.run(ev), plain.run_ex(ev)
    assert all(np.array_equal(x, y) for x, y in zip(a[:-1], b[:-1]))   # learning off: the core alone
    assert lcore.stretches == 0
    lcore.set_learning(True)
    lcore.set_target(target_modes(config.n_out, label=0))
    lcore.run(ev)
    assert lcore.stretches == 1 and lcore.commits == 1
    changed = [m for m in MATRICES if not np.array_equal(lcore.core.get_weights(m), w[m])]
    assert changed, "a labelled stretch changed no weight"


def test_core_stepped_behind_its_back_is_resynced():
    """Steps run on the core directly between stretches: the learner takes the core's spikes and
    refractory counters again (same as the reference, which always reads its core's own)."""
    rng = np.random.default_rng(11)
    config, hid, out, w = _net(rng, 11)
    config = dataclasses.replace(config, t_ref_steps=3)   # refractory counters carried across the gap
    hid, out = fixed_params(config, Chip(seed=11, threshold=0.1))
    lc = LearningConfig(rule="eprop", learn=("in", "rec", "out"), rate_in=6, rate_rec=6, rate_out=4)
    lcore, rcore = _pair(config, hid, out, w, lc)
    lcore.set_learning(True)
    rcore.set_learning(True)
    lcore.set_target(target_modes(config.n_out, label=config.n_out - 1))
    rcore.set_target(target_modes(config.n_out, label=config.n_out - 1))
    for _ in range(4):
        ev = Events.from_raster(rng.poisson(1.0, (30, config.n_in)))
        ip, ch = np.asarray(ev.indptr), np.asarray(ev.channels)
        lcore.run(ev)
        rcore.run(ip, ch)
        lcore.core.run(ev)                      # behind the learner's back
        rcore.core.run(ip, ch)
        _same_state(lcore, rcore, "after")
    lcore.run(ev)
    rcore.run(ip, ch)
    _same_state(lcore, rcore, "end")


def test_set_last_spikes_is_checked():
    rng = np.random.default_rng(3)
    config, hid, out, w = _net(rng, 3)
    L = Learner(config, hid, out, LearningConfig(), w)
    with pytest.raises(ValueError):
        L.set_last_spikes(np.zeros(config.n_hid + 1, np.uint8))
    with pytest.raises(CoreInputError):
        L.set_last_spikes(np.full(config.n_hid, 2, np.uint8))
    L.set_last_spikes(np.ones(config.n_hid, np.uint8))
