"""`spikewire bench core`: the peer workload v1 (700 -> 256 rec -> 20) on the C core.

Implements the standard workload of shared/bench/WORKLOAD.md: 700 Poisson
inputs at p = 10/700 per 1 ms step, 256 recurrent current-based LIF neurons
(tau_syn 5 ms, tau_mem 10 ms, threshold 1, reset 0), 20 leaky readouts
(tau 10 ms), 1000 steps.  The float weights of the workload are mapped onto
the core's 6-bit grid with one shift per matrix, ``w * 4096 ~= q * 2^s``
(threshold = 4096 units), q clipped to -63..63.

Modes, each processing the 1000-step sample after a reset:

* ``block``: one ``Core.run`` per sample;
* ``stream``: one ``Core.step`` per 1 ms step (copies of the outputs);
* ``stream_nocopy``: ``Core.step(copy=False)`` (views of the core's buffers);
* ``c_block`` / ``c_stream``: the bare C loop: a tiny C driver, compiled at
  bench time with the system C compiler, that calls ``sw_core_run`` once per
  sample, or ``sw_core_step`` once per step, on the same core object and the
  same compiled code as the modes above; only Python is taken away.  The
  ratios ``block/c_block`` and ``stream/c_stream`` make the Python overhead
  visible.

Measurement: a 1000-step sample takes about a millisecond, so each timed run
repeats it until the run lasts at least ``min_time`` (0.2 s); after a
calibration (which is the warm-up) every mode is timed ``runs`` times,
interleaved round by round so a change of machine load hits all modes alike.
Each run is timed by ``time.perf_counter`` (wall) and ``time.process_time``
(this process's CPU time, less sensitive to other processes on a shared
machine); steps/s are reported as best and median of the runs for both
clocks.  The load average before and after is part of the JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

import numpy as np

from .config import CoreConfig, PopulationConfig
from .core import Core, Events

N_IN, N_HID, N_OUT, T = 700, 256, 20, 1000
THRESHOLD = 4096
MIN_TIME_S = 0.2


def workload_weights() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng([20241123, 1])
    w_in = (0.01 + 0.15 * rng.standard_normal((N_IN, N_HID))).astype(np.float32)
    w_rec = (0.05 * rng.standard_normal((N_HID, N_HID))).astype(np.float32)
    np.fill_diagonal(w_rec, 0)
    w_out = (rng.standard_normal((N_HID, N_OUT)) / 16).astype(np.float32)
    return w_in, w_rec, w_out


def workload_input(b: int = 0) -> Events:
    rng = np.random.default_rng([20241123, 1000 + b])
    raster = rng.random((T, N_IN)) < 10 / 700
    return Events.from_raster(raster)


def quantize(w: np.ndarray, bits_max: int = 63) -> tuple[np.ndarray, int]:
    """Smallest shift s with max|w| * 4096 / 2^s <= 63; q = round(w * 4096 / 2^s)."""
    s = max(0, math.ceil(math.log2(float(np.abs(w).max()) * THRESHOLD / bits_max)))
    q = np.clip(np.round(w * THRESHOLD / 2**s), -bits_max, bits_max).astype(np.int8)
    return q, s


def build_core() -> Core:
    w_in, w_rec, w_out = workload_weights()
    (q_in, s_in), (q_rec, s_rec), (q_out, s_out) = quantize(w_in), quantize(w_rec), quantize(w_out)
    cfg = CoreConfig(
        n_in=N_IN, n_hid=N_HID, n_out=N_OUT, preset="unbounded",
        hidden=PopulationConfig(tau_syn_ms=5.0, tau_mem_ms=10.0, v_th=THRESHOLD, v_reset=0, v_leak=0),
        readout=PopulationConfig(tau_syn_ms=5.0, tau_mem_ms=10.0),
        shift_in=s_in, shift_rec=s_rec, shift_out=s_out, t_ref_steps=0,
    )
    core = Core(cfg)
    core.set_weights("in", q_in)
    core.set_weights("rec", q_rec)
    core.set_weights("out", q_out)
    return core


# -- the bare C loop ------------------------------------------------------------
# The driver takes the core and the entry points as addresses from the loaded
# extension (the prototypes are those of csrc/spikewire.h), so it needs no header
# and no sources: only a C compiler.
C_LOOP_SOURCE = r"""
#include <stdint.h>
#include <stddef.h>
typedef int (*run_fn)(void *, int32_t, const int64_t *, const int32_t *, int64_t,
                      uint8_t *, int16_t *, int16_t *, uint8_t *, int64_t *);
typedef int (*step_fn)(void *, const int32_t *, int32_t, uint8_t *, int16_t *, int16_t *, uint8_t *);
typedef int (*reset_fn)(void *);

/* reps x (reset; one sw_core_run of T steps); outputs of the last sample stay in the buffers */
int loop_block(void *reset, void *run, void *core, int32_t reps, int32_t T, const int64_t *indptr,
               const int32_t *ch, uint8_t *spk, int16_t *ov, uint8_t *cadc, int64_t *n_spikes)
{
    int32_t r;
    int st;
    for (r = 0; r < reps; r++) {
        if ((st = ((reset_fn)reset)(core)) != 0) return st;
        if ((st = ((run_fn)run)(core, T, indptr, ch, indptr[T], spk, NULL, ov, cadc, n_spikes)) != 0)
            return st;
    }
    return 0;
}

/* reps x (reset; T calls of sw_core_step); spk/ov/cadc receive each step in turn (row t) */
int loop_stream(void *reset, void *step, void *core, int32_t reps, int32_t T, const int64_t *indptr,
                const int32_t *ch, uint8_t *spk, int16_t *ov, uint8_t *cadc, int32_t n_hid, int32_t n_out)
{
    int32_t r, t;
    int st;
    for (r = 0; r < reps; r++) {
        if ((st = ((reset_fn)reset)(core)) != 0) return st;
        for (t = 0; t < T; t++) {
            st = ((step_fn)step)(core, ch + indptr[t], (int32_t)(indptr[t + 1] - indptr[t]),
                                 spk + (ptrdiff_t)t * n_hid, NULL, ov + (ptrdiff_t)t * n_out,
                                 cadc + (ptrdiff_t)t * n_out);
            if (st != 0) return st;
        }
    }
    return 0;
}
"""
_C_LOOP_CDEF = """
int loop_block(void *, void *, void *, int32_t, int32_t, const int64_t *, const int32_t *,
               uint8_t *, int16_t *, uint8_t *, int64_t *);
int loop_stream(void *, void *, void *, int32_t, int32_t, const int64_t *, const int32_t *,
                uint8_t *, int16_t *, uint8_t *, int32_t, int32_t);
"""


class CLoopUnavailable(RuntimeError):
    """No C compiler, or the driver did not build or load."""


class CLoop:
    """The bare C loop on a :class:`Core`: compiled on construction, in a temporary folder."""

    def __init__(self, core: Core, events: Events, cc: str | None = None):
        from cffi import FFI

        from . import core as core_mod

        cc = cc or os.environ.get("CC") or (sysconfig.get_config_var("CC") or "cc").split()[0]
        cc_argv = shlex.split(cc)
        if not shutil.which(cc_argv[0]):
            raise CLoopUnavailable(f"no C compiler ({cc_argv[0]!r} not found)")
        from ._build import PORTABLE_FLAGS
        self.tmp = tempfile.TemporaryDirectory(prefix="spikewire-bench-")
        src = os.path.join(self.tmp.name, "loop.c")
        so = os.path.join(self.tmp.name, "loop.so")
        with open(src, "w") as f:
            f.write(C_LOOP_SOURCE)
        self.compile_cmd = cc_argv + PORTABLE_FLAGS + ["-shared", "-fPIC", src, "-o", so]
        r = subprocess.run(self.compile_cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise CLoopUnavailable(f"C driver did not compile: {r.stderr.strip()[:500]}")
        self.ffi = FFI()
        self.ffi.cdef(_C_LOOP_CDEF)
        self.lib = self.ffi.dlopen(so)
        cffi_, lib_ = core_mod._ffi, core_mod._lib

        def addr(name):
            return self.ffi.cast("void *", int(cffi_.cast("uintptr_t", cffi_.addressof(lib_, name))))

        self._reset, self._run, self._step = addr("sw_core_reset"), addr("sw_core_run"), addr("sw_core_step")
        self.core = core
        self._core_ptr = self.ffi.cast("void *", int(cffi_.cast("uintptr_t", core._live())))
        c = core.config
        self.T = len(events.indptr) - 1
        self.indptr = np.ascontiguousarray(events.indptr, np.int64)
        self.ch = np.ascontiguousarray(events.channels, np.int32)
        if self.ch.size == 0:
            self.ch = np.zeros(1, np.int32)  # a valid pointer; indptr says no events
        self.spikes = np.zeros((self.T, c.n_hid), np.uint8)
        self.out_v = np.zeros((self.T, c.n_out), np.int16)
        self.cadc = np.zeros((self.T, c.n_out), np.uint8)
        self.n_spikes = self.ffi.new("int64_t *")
        fb = self.ffi.from_buffer
        self._args = (fb("int64_t[]", self.indptr), fb("int32_t[]", self.ch),
                      fb("uint8_t[]", self.spikes, require_writable=True),
                      fb("int16_t[]", self.out_v, require_writable=True),
                      fb("uint8_t[]", self.cadc, require_writable=True))

    def block(self, reps: int) -> None:
        ip, ch, spk, ov, cadc = self._args
        with self.core._guard():
            st = self.lib.loop_block(self._reset, self._run, self._core_ptr, reps, self.T, ip, ch,
                                     spk, ov, cadc, self.n_spikes)
        if st != 0:
            raise RuntimeError(f"C loop: sw_core_run returned {st}")

    def stream(self, reps: int) -> None:
        ip, ch, spk, ov, cadc = self._args
        c = self.core.config
        with self.core._guard():
            st = self.lib.loop_stream(self._reset, self._step, self._core_ptr, reps, self.T, ip, ch,
                                      spk, ov, cadc, c.n_hid, c.n_out)
        if st != 0:
            raise RuntimeError(f"C loop: sw_core_step returned {st}")

    def close(self) -> None:
        self.tmp.cleanup()


# -- timing -----------------------------------------------------------------------
def calibrate(fn, min_time: float = MIN_TIME_S, margin: float = 1.25) -> int:
    """Repetitions of ``fn(reps)`` that take at least ``margin * min_time`` s of CPU time (also the
    warm-up).  CPU time is calibrated because wall time >= CPU time for this one thread: a timed run
    stays >= ``min_time`` of wall time however the load changes, unless the CPU cost itself drops
    by more than the margin."""
    reps, target = 1, margin * min_time
    while True:
        t0 = time.process_time()
        fn(reps)
        dt = time.process_time() - t0
        if dt >= target:
            return reps
        reps = max(reps + 1, math.ceil(reps * target * 1.1 / max(dt, 1e-6)))


def time_once(fn, reps: int) -> tuple[float, float]:
    """(wall s, CPU s) of one ``fn(reps)``."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn(reps)
    c1, w1 = time.process_time(), time.perf_counter()
    return w1 - w0, c1 - c0


def summarize(times: list[tuple[float, float]], reps: int, steps: int = T) -> dict:
    """Steps/s (best, median) for both clocks from per-run (wall, cpu) times of ``reps`` samples."""
    n = reps * steps
    wall = [n / w for w, _ in times]
    cpu = [n / c for _, c in times if c > 0]
    return {
        "reps_per_run": reps,
        "run_wall_s": [round(w, 4) for w, _ in times],
        "run_cpu_s": [round(c, 4) for _, c in times],
        "steps_per_s_median": statistics.median(wall),
        "steps_per_s_best": max(wall),
        "steps_per_s_min": min(wall),
        "cpu_steps_per_s_median": statistics.median(cpu) if cpu else None,
        "cpu_steps_per_s_best": max(cpu) if cpu else None,
        "us_per_step_median": 1e6 / statistics.median(wall),
        "cpu_us_per_step_median": 1e6 / statistics.median(cpu) if cpu else None,
    }


def measure(modes: dict, runs: int, min_time: float = MIN_TIME_S) -> dict:
    """Calibrate every mode, then ``runs`` rounds timing each mode once per round."""
    reps = {name: calibrate(fn, min_time) for name, fn in modes.items()}
    times: dict[str, list] = {name: [] for name in modes}
    for _ in range(runs):
        for name, fn in modes.items():
            times[name].append(time_once(fn, reps[name]))
    return {name: summarize(times[name], reps[name]) for name in modes}


RATIOS = (("block", "c_block"), ("stream", "c_stream"), ("stream_nocopy", "c_stream"))


def ratios(res: dict) -> dict:
    """Median steps/s of a Python mode over its bare C loop, for the wall and the CPU clock."""
    out = {}
    for a, b in RATIOS:
        if a in res and b in res:
            cpu = None
            if res[a]["cpu_steps_per_s_median"] and res[b]["cpu_steps_per_s_median"]:
                cpu = res[a]["cpu_steps_per_s_median"] / res[b]["cpu_steps_per_s_median"]
            out[f"{a}/{b}"] = {"wall": res[a]["steps_per_s_median"] / res[b]["steps_per_s_median"],
                               "cpu": cpu}
    return out


def run(json_path: str | None = None, runs: int = 5, kernel: str = "fast",
        min_time: float = MIN_TIME_S, c_loop: bool = True) -> dict:
    load_before = os.getloadavg()
    core = build_core()
    core.kernel = kernel
    ev = workload_input(0)
    per_step = [ev.channels[ev.indptr[t]:ev.indptr[t + 1]].copy() for t in range(T)]

    def block(reps):
        for _ in range(reps):
            core.reset()
            core.run(ev)

    def stream(reps):
        step = core.step
        for _ in range(reps):
            core.reset()
            for ch in per_step:
                step(ch)

    def stream_nocopy(reps):
        step = core.step
        for _ in range(reps):
            core.reset()
            for ch in per_step:
                step(ch, False)

    core.reset()
    out = core.run(ev)
    modes = {"block": block, "stream": stream, "stream_nocopy": stream_nocopy}
    loop, c_info = None, {"available": False}
    if c_loop:
        try:
            loop = CLoop(core, ev)
        except CLoopUnavailable as e:
            c_info["reason"] = str(e)
        else:
            # the C loop computes what Core.run computes, or its timing means nothing
            for fn in (loop.block, loop.stream):
                fn(1)
                if not (np.array_equal(loop.spikes, out.spikes) and np.array_equal(loop.out_v, out.out_v)
                        and np.array_equal(loop.cadc, out.cadc)):
                    raise RuntimeError(f"the C loop ({fn.__name__}) differs from Core.run")
            c_info = {"available": True, "compile": " ".join(loop.compile_cmd[:-3])}
            modes["c_block"], modes["c_stream"] = loop.block, loop.stream
    try:
        res = measure(modes, runs, min_time)
    finally:
        if loop is not None:
            loop.close()
    load_after = os.getloadavg()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    result = {
        "workload": "peer-v1 700-256(rec)-20, 1000 x 1 ms steps, p_in = 10/700",
        "kernel": kernel,
        "runs": runs,
        "min_run_s": min_time,
        "modes": res,
        "block_steps_per_s": res["block"]["steps_per_s_median"],
        "stream_steps_per_s": res["stream"]["steps_per_s_median"],
        "stream_nocopy_steps_per_s": res["stream_nocopy"]["steps_per_s_median"],
        "block_rtf": res["block"]["steps_per_s_median"] / 1000.0,
        "stream_rtf": res["stream"]["steps_per_s_median"] / 1000.0,
        "c_loop": c_info,
        "ratios": ratios(res),
        # CPU microseconds per step spent outside C: a Python mode minus its bare C loop
        "python_cpu_us_per_step": {
            a: res[a]["cpu_us_per_step_median"] - res[b]["cpu_us_per_step_median"]
            for a, b in RATIOS if a in res and b in res and res[a]["cpu_us_per_step_median"]
            and res[b]["cpu_us_per_step_median"]},
        "shortest_run_wall_s": min(min(m["run_wall_s"]) for m in res.values()),
        "hidden_spikes_per_step": out.n_spikes / T,
        "input_spikes_per_step": len(ev.channels) / T,
        "peak_rss_mb": rss,
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if json_path:
        with open(json_path, "w") as f:
            f.write(text + "\n")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="spikewire bench core", description=__doc__.splitlines()[0])
    p.add_argument("--json", metavar="PATH", help="also write the result as JSON")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--kernel", choices=["fast", "reference"], default="fast")
    p.add_argument("--min-time", type=float, default=MIN_TIME_S, help="seconds per timed run (default 0.2)")
    p.add_argument("--no-c-loop", action="store_true", help="skip the bare C loop (needs a C compiler)")
    a = p.parse_args(argv)
    run(a.json, a.runs, a.kernel, a.min_time, not a.no_c_loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
