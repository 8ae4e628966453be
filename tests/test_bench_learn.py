"""The instruments of `spikewire bench core --learn` (runtime/bench_learn.py; the speed itself is
a benchmark, not a test): the block driver feeds the C learner exactly what the reference core and
learner compute step by step (refractory flags from the counters, split blocks, per-step calls),
and the benchmark runs and reports its keys."""
from __future__ import annotations

import numpy as np

from spikewire import bench_learn
from spikewire.config import Chip, CoreConfig, PopulationConfig, fixed_params
from spikewire.core import Core
from spikewire.events import Events
from spikewire.learner import Learner
from spikewire.learning import MATRICES, LearningConfig, ReferenceLearner, run_reference, target_modes
from spikewire.reference import ReferenceCore


def _net(seed=4):
    rng = np.random.default_rng(seed)
    config = CoreConfig(n_in=12, n_hid=9, n_out=3, shift_in=7, shift_rec=5, t_ref_steps=2,
                        hidden=PopulationConfig(tau_syn_ms=4.0, tau_mem_ms=8.0))
    chip = Chip(seed=seed, threshold=0.1, decay=0.1, gain=0.1)
    w = {"in": rng.integers(0, 64, (12, 9)).astype(np.int8), "rec": rng.integers(-20, 21, (9, 9)).astype(np.int8),
         "out": rng.integers(-63, 64, (9, 3)).astype(np.int8)}
    counts = rng.poisson(0.6, (90, 12))
    return config, chip, w, Events.from_raster(counts)


def test_block_driver_equals_reference_step_by_step():
    config, chip, w, ev = _net()
    hid, out = fixed_params(config, chip)
    lc = LearningConfig(learn=("in", "rec", "out"), feedback="random", rate_in=8, rate_rec=8, rate_out=6)
    modes = target_modes(3, label=1)
    rcore = ReferenceCore(config, hid, out)
    rcore.w_in, rcore.w_rec, rcore.w_out = w["in"], w["rec"], w["out"]
    ref = ReferenceLearner(config, hid, out, lc, w)
    ref.set_target(modes)
    rec = run_reference(rcore, ref, np.asarray(ev.indptr), np.asarray(ev.channels))
    assert rec["refr"].any(), "no refractory step: the flags were not exercised"

    def c_pair():
        core = Core(config, chip)
        for m in MATRICES:
            core.set_weights(m, w[m])
        L = Learner(config, hid, out, lc, w)
        L.set_target(modes)
        return core, L

    ip, ch = np.asarray(ev.indptr), np.asarray(ev.channels)
    sub = lambda a, b: Events((ip[a:b + 1] - ip[a]).astype(np.int64), ch[ip[a]:ip[b]])  # noqa: E731
    # one block, two blocks, and one call per step (the streaming mode of the benchmark)
    for cuts in ([0, 90], [0, 37, 90], list(range(91))):
        core, L = c_pair()
        before = np.zeros(9, np.uint8)
        for a, b in zip(cuts[:-1], cuts[1:]):
            got = bench_learn.learn_block(core, L, sub(a, b), before)
            assert np.array_equal(got["refr"], rec["refr"][a:b]) and np.array_equal(got["z"], rec["z"][a:b])
            before = got["hid_ref"][-1] > 0
        for m in MATRICES:
            assert np.array_equal(L.acc(m), ref.acc[m]), (cuts[:3], m)


def test_benchmark_reports_its_keys(tmp_path):
    path = tmp_path / "b.json"
    r = bench_learn.run(str(path), runs=1, n_steps=30, min_run_s=0.0)
    for k in ("learn_steps_per_s", "learner_steps_per_s", "core_steps_per_s", "learn_stream_steps_per_s"):
        assert r[k]["median"] > 0 and len(r[k]["all"]) == 1
    assert r["synapses_with_traces"] == 700 * 256 + 256 * 256
    assert 0.0 < r["psi_nonzero_fraction"] < 1.0 and r["hidden_spikes_per_step"] > 0
    assert path.read_text().startswith("{")
