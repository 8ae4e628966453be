"""`spikewire bench core`: the peer workload v1 (700 -> 256 rec -> 20) on the C core.

Implements the standard workload of shared/bench/WORKLOAD.md (copied in
docs/benchmarks.md): 700 Poisson inputs at p = 10/700 per 1 ms step, 256
recurrent current-based LIF neurons (tau_syn 5 ms, tau_mem 10 ms, threshold
1, reset 0), 20 leaky readouts (tau 10 ms), 1000 steps.  The float weights of
the workload are mapped onto the core's 6-bit grid with one shift per matrix,
``w * 4096 ~= q * 2^s`` (threshold = 4096 units), q clipped to -63..63.

Measurement rules follow the workload: one warm-up, then the median of 5
timed runs, each resetting state and processing the 1000-step sample.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import statistics
import sys
import time

import numpy as np

from .config import CoreConfig, PopulationConfig
from .core import Core, Events

N_IN, N_HID, N_OUT, T = 700, 256, 20, 1000
THRESHOLD = 4096


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


def _median_time(fn, runs: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(json_path: str | None = None, runs: int = 5, kernel: str = "fast") -> dict:
    core = build_core()
    core.kernel = kernel
    ev = workload_input(0)
    per_step = [ev.channels[ev.indptr[t]:ev.indptr[t + 1]].copy() for t in range(T)]

    def block():
        core.reset()
        return core.run(ev)

    def stream():
        core.reset()
        step = core.step
        for ch in per_step:
            step(ch)

    out = block()
    t_block = _median_time(block, runs)
    t_stream = _median_time(stream, runs)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    result = {
        "workload": "peer-v1 700-256(rec)-20, 1000 x 1 ms steps, p_in = 10/700",
        "kernel": kernel,
        "block_steps_per_s": T / t_block,
        "stream_steps_per_s": T / t_stream,
        "block_rtf": T / t_block / 1000.0,
        "stream_rtf": T / t_stream / 1000.0,
        "hidden_spikes_per_step": out.n_spikes / T,
        "input_spikes_per_step": len(ev.channels) / T,
        "peak_rss_mb": rss,
        "runs": runs,
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
    a = p.parse_args(argv)
    run(a.json, a.runs, a.kernel)
    return 0


if __name__ == "__main__":
    sys.exit(main())
