"""The instruments of `spikewire bench cpu` (the numbers themselves are a benchmark, not a test):
the QEMU plugin counts A64 instructions between getpgid(0) marks exactly, and the workload
processes the same audio as `spikewire demo`."""
from __future__ import annotations

import os
import subprocess

import pytest

from spikewire import bench_cpu

from conftest import SHIPPED_DEMO_WORDS

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN_SRC = os.path.join(HERE, "aarch64", "insn_plugin.c")

SPIN = r"""
#include <unistd.h>
__attribute__((noinline)) static void spin(long n) { for (long i = 0; i < n; i++) __asm__ volatile("nop"); }
__attribute__((noinline)) static void phase(long n) { spin(n); getpgid(0); }
int main(void) {
    getpgid(0); phase(1000); phase(2000); phase(3000);
    getpgid(1);  /* not a mark (pid 1) */
    return 0;
}
"""


def test_plugin_counts_instructions_between_marks(tmp_path):
    plugin = tmp_path / "insn.so"
    subprocess.run(["cc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared",
                    "-fvisibility=hidden", PLUGIN_SRC, "-o", str(plugin)], check=True, timeout=120)
    src = tmp_path / "spin.c"
    src.write_text(SPIN)
    exe = tmp_path / "spin"
    subprocess.run(["aarch64-linux-gnu-gcc", "-O2", str(src), "-o", str(exe)], check=True, timeout=120)
    out = tmp_path / "counts.txt"
    subprocess.run(["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", "-plugin", f"{plugin},out={out}", str(exe)],
                   check=True, timeout=60)
    lines = out.read_text().splitlines()
    marks = [int(s.split()[2]) for s in lines if s.startswith("mark ")]
    assert len(marks) == 4, lines  # getpgid(1) is not a mark
    total = int(lines[-1].split()[1])
    assert lines[-1].startswith("total ") and total > marks[-1]
    d1, d2, d3 = (b - a for a, b in zip(marks, marks[1:]))
    # each nop iteration costs the same fixed number of instructions: the counts are linear, exactly
    assert d2 - d1 == d3 - d2 and (d2 - d1) % 1000 == 0 and d1 >= 2000


def test_plugin_rejects_unknown_arguments(tmp_path):
    plugin = tmp_path / "insn.so"
    subprocess.run(["cc", "-std=c99", "-O2", "-fPIC", "-shared", "-fvisibility=hidden", PLUGIN_SRC, "-o",
                    str(plugin)], check=True, timeout=120)
    r = subprocess.run(["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu", "-plugin", f"{plugin},bogus=1",
                        "/usr/aarch64-linux-gnu/lib/libc.so.6"], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "unknown argument bogus=1" in r.stderr


def test_workload_is_the_demo_audio():
    """At the model's own rate the workload's stream is the demo's: same steps and keywords."""
    w = bench_cpu.workload(rate=8000, block_ms=10.0)
    assert w["steps"] == 2721 and w["keywords"] == len(SHIPPED_DEMO_WORDS) and w["core_kernel"] == "fast"
    w16 = bench_cpu.workload(rate=16000, block_ms=10.0)
    assert w16["steps"] == 2721 and w16["blocks"] == w["blocks"]
    # the learning phases really learn: one stretch and one commit per block, accumulators moved
    for phase in bench_cpu.LEARN_PHASES:
        got = w16["learning"][phase]
        assert got["stretches"] == got["commits"] == w16["blocks"]  # (the flush block has no steps)
        assert got["accumulators_moved"] > 0


def test_phase_marks_follow_the_workload():
    """The mark bookkeeping the counters use matches the marks the workload makes (counted here)."""
    import os as _os

    seen = []
    real = _os.getpgid
    _os.getpgid = lambda pid: seen.append(pid) or real(pid)
    try:
        bench_cpu.workload(rate=8000, block_ms=10.0)
    finally:
        _os.getpgid = real
    starts, n_marks = bench_cpu._phase_marks(False)
    assert len(seen) == n_marks and set(starts) == set(bench_cpu.PHASES)
    assert sorted(starts.values()) == [0, 1, 2, 3, 4, 6, 8, 10] and n_marks == 12


def test_replay_phase_replays_a_fired_keywords_stretch():
    """The replay_label phase replays the last keyword's stretch from the buffer (a checkpoint
    before it, the stretch inside what is replayed) and learns: accumulators move."""
    w = bench_cpu.workload(rate=8000, block_ms=10.0)
    r = w["replay"]
    start, end = r["stretch"]
    assert r["stretch_steps"] == end + 1 - start > 10 and r["replayed_steps"] > r["stretch_steps"]
    assert end < w["steps"] and r["word"] in ("zero", "one", "two", "three", "four", "five", "six", "seven",
                                              "eight", "nine")
    assert r["accumulators_moved"] > 0


def test_runtime_phases_count_the_start_up_once(monkeypatch):
    """--runtime: the start-up phase runs one block, the others the whole audio (fast, paced at real
    time, learning on) and hear what the shipped model hears of the demo; the per-second numbers take the start-up off."""
    seen = []
    real = bench_cpu._runtime_phase

    def spy(model, x, rate, block_ms, **kw):
        seen.append((x.shape[0], kw))
        return real(model, x, rate, block_ms, **kw) if not kw.get("paced") else {
            "keywords": -1, "wall_s": 0.0, "calls": {}, "buffered_steps": 0}  # real time: skipped here
    monkeypatch.setattr(bench_cpu, "_runtime_phase", spy)
    w = bench_cpu.workload(rate=8000, block_ms=10.0, runtime=True)
    assert [n for n, _ in seen] == [80, 80, w["audio_s"] * 8000, w["audio_s"] * 8000, w["audio_s"] * 8000]
    assert [kw for _, kw in seen] == [{"counted": False}, {}, {}, {"paced": True}, {"learn": True}]
    rt = w["runtime"]
    assert rt["runtime_pipeline"]["keywords"] == rt["runtime_learn"]["keywords"] == len(SHIPPED_DEMO_WORDS)
    assert rt["runtime_learn"]["buffered_steps"] > 2000 and rt["runtime_pipeline"]["buffered_steps"] == 0
    starts, n_marks = bench_cpu._phase_marks(True)
    assert set(starts) == set(bench_cpu.PHASES) | set(bench_cpu.RUNTIME_PHASES) and n_marks == 20
    res = {"isa": "aarch64 (A64)", "workload": {"audio_s": 10.0, "steps": 2500},
           "phases": {p: {"instructions": 10_000_000} for p in bench_cpu.PHASES}}
    res["phases"].update({p: {"instructions": 50_000_000} for p in bench_cpu.RUNTIME_PHASES})
    res["phases"]["runtime_startup"] = {"instructions": 5_000_000}
    s = bench_cpu.summarize(res)
    assert s["runtime_per_audio_s"] == {p: 4_500_000 for p in bench_cpu.RUNTIME_PHASES[1:]}


def test_summary_and_estimate_arithmetic():
    res = {"isa": "aarch64 (A64)", "workload": {"audio_s": 10.0, "steps": 2500},
           "phases": {p: {"instructions": 10_000_000} for p in bench_cpu.PHASES}}
    s = bench_cpu.summarize(res)
    assert s["inference_per_audio_s"] == 3_000_000  # frontend + core + decision, 10 s
    assert s["python_overhead_per_audio_s"] == {"frontend": 0, "core": 0}
    assert s["learning_on_per_audio_s"] == {p: 3_000_000 for p in bench_cpu.LEARN_PHASES}
    assert s["estimate"][0]["learning_on_load_pct"]["core_learn_eprop"] == [pytest.approx(0.11),
                                                                             pytest.approx(0.25)]
    pi4 = s["estimate"][0]
    # 3e6 instr/s at IPC 1.5 x 1.8 GHz = 0.11 %, at IPC 0.8 x 1.5 GHz = 0.25 %
    assert pi4["load_pct_of_one_core"] == [pytest.approx(0.11), pytest.approx(0.25)]
