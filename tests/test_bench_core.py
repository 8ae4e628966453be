"""`spikewire bench core`: what it times is what Core computes (no timing is asserted here).

The bare C loop is compiled from bench_core.C_LOOP_SOURCE and drives the same
core object through sw_core_run / sw_core_step; its outputs must equal Core.run's,
or its speed would be a figure for some other computation.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from spikewire import bench_core as b


@pytest.fixture(scope="module")
def workload():
    core = b.build_core()
    ev = b.workload_input(0)
    core.reset()
    return core, ev, core.run(ev)


def test_workload_activity_is_the_peer_workload(workload):
    _, ev, out = workload
    assert out.n_spikes / b.T == pytest.approx(5.04, abs=0.005)  # WORKLOAD.md: 5.04 hidden spikes/step
    assert len(ev.channels) / b.T == pytest.approx(9.91, abs=0.005)


@pytest.mark.parametrize("mode", ["block", "stream"])
def test_c_loop_computes_what_core_run_computes(workload, mode):
    core, ev, out = workload
    loop = b.CLoop(core, ev)
    try:
        getattr(loop, mode)(2)  # two samples, each after a reset: the second equals the first
        assert np.array_equal(loop.spikes, out.spikes)
        assert np.array_equal(loop.out_v, out.out_v)
        assert np.array_equal(loop.cadc, out.cadc)
        if mode == "block":
            assert loop.n_spikes[0] == out.n_spikes
        assert core.steps == b.T  # the C loop stepped this very core
    finally:
        loop.close()


def test_c_loop_reports_a_c_status(workload):
    core, ev, _ = workload
    bad = b.Events(np.array([0, 1], np.int64), np.array([b.N_IN], np.int32))  # channel out of range
    loop = b.CLoop(core, bad)
    try:
        with pytest.raises(RuntimeError, match="sw_core_run returned"):
            loop.block(1)
        with pytest.raises(RuntimeError, match="sw_core_step returned"):
            loop.stream(1)
    finally:
        loop.close()


def test_missing_compiler_is_a_clear_reason(workload):
    core, ev, _ = workload
    with pytest.raises(b.CLoopUnavailable, match="no C compiler"):
        b.CLoop(core, ev, cc="/nonexistent/cc")


def test_step_copy_false_gives_read_only_views_of_the_same_values(workload):
    core, ev, out = workload
    core.reset()
    views = []
    for t in range(50):
        s = core.step(ev.channels[ev.indptr[t]:ev.indptr[t + 1]], copy=False)
        assert np.array_equal(s.spikes, out.spikes[t]) and np.array_equal(s.cadc, out.cadc[t])
        assert np.array_equal(s.out_v, out.out_v[t])
        assert not s.spikes.flags.writeable
        views.append(s)
    assert all(v.spikes is views[0].spikes for v in views)  # no allocation: the same buffers each step
    copied = core.step(ev.channels[ev.indptr[50]:ev.indptr[51]])
    assert copied.spikes.flags.writeable and copied.spikes is not views[0].spikes


def test_calibrate_reaches_the_minimum_cpu_time():
    calls = []

    def fn(reps):
        calls.append(reps)
        x = 0
        for _ in range(reps * 2000):
            x += 1

    reps = b.calibrate(fn, min_time=0.02)
    assert calls[-1] == reps and reps > 1
    wall, cpu = b.time_once(fn, reps)
    assert wall >= cpu > 0


def test_summary_and_ratio_arithmetic():
    s = b.summarize([(0.5, 0.25), (1.0, 0.5), (0.25, 0.25)], reps=10, steps=1000)
    assert s["steps_per_s_median"] == 20000 and s["steps_per_s_best"] == 40000
    assert s["cpu_steps_per_s_median"] == 40000 and s["us_per_step_median"] == 50
    c = b.summarize([(0.25, 0.125)], reps=10, steps=1000)
    r = b.ratios({"block": s, "c_block": c})
    assert r == {"block/c_block": {"wall": 0.5, "cpu": 0.5}}


def test_bench_writes_json(tmp_path):
    path = tmp_path / "core.json"
    res = b.run(str(path), runs=1, min_time=0.01)
    data = json.loads(path.read_text())
    assert data["modes"].keys() == {"block", "stream", "stream_nocopy", "c_block", "c_stream"}
    assert data["c_loop"]["available"] and set(data["ratios"]) == {"block/c_block", "stream/c_stream",
                                                                  "stream_nocopy/c_stream"}
    assert data["hidden_spikes_per_step"] == res["hidden_spikes_per_step"] == 5.04
    assert len(data["loadavg_before"]) == 3


def test_step_takes_every_integer_form_of_the_channels(workload):
    """The fast path recognises native int32 by identity; every other form takes the checked path."""
    core, ev, out = workload
    ch = ev.channels[ev.indptr[0]:ev.indptr[1]]
    forms = [np.ascontiguousarray(ch, np.int32), list(map(int, ch)), ch.astype(np.int64), ch.astype(">i4"),
             np.repeat(ch.astype(np.int32), 2)[::2]]
    for form in forms:
        core.reset()
        s = core.step(form)
        assert np.array_equal(s.spikes, out.spikes[0]) and np.array_equal(s.out_v, out.out_v[0]), type(form)
    core.reset()
    with pytest.raises(ValueError, match="out of range"):
        core.step(np.array([b.N_IN], np.int32))  # the fast path still reaches the C check
