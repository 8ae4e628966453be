"""Benchmark of the streaming audio front end (not a test: no thresholds).

Real-time factor = audio duration / processing wall time, median of ``repeats``
runs on one thread, default :class:`~runtime.frontend.FrontEndConfig`.
The front end object is built outside the timed region (filter design is a
one-off cost); resampling, filtering and encoding are inside it.

Run as ``python -m spikewire.bench_frontend [--seconds S] [--json PATH]``.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np

from .frontend import FrontEnd, FrontEndConfig


def _test_signal(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like int16 audio: gliding harmonic complex with syllable-rate AM plus noise."""
    rng = np.random.default_rng(seed)
    n = int(round(rate * seconds))
    t = np.arange(n) / rate
    f0 = 120.0 + 40.0 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = np.zeros(n)
    for h in range(1, 30):
        if h * 160.0 > 0.45 * rate:
            break
        x += np.sin(h * phase) / h
    am = 0.5 * (1 + np.sin(2 * np.pi * 3.0 * t)) ** 2
    x = 0.2 * x * am + 0.01 * rng.standard_normal(n)
    return np.clip(np.rint(x / np.max(np.abs(x)) * 0.5 * 32767), -32768, 32767).astype(np.int16)


def _time_once(fe: FrontEnd, x: np.ndarray, block: int | None) -> tuple[float, int]:
    fe.reset()
    t0 = time.perf_counter()
    n_ev = 0
    if block is None:
        n_ev += fe.process(x).n_events
    else:
        for i in range(0, x.shape[0], block):
            n_ev += fe.process(x[i:i + block]).n_events
    n_ev += fe.flush().n_events
    return time.perf_counter() - t0, n_ev


def _rtf(rate: int, seconds: float, repeats: int, block_ms: float | None, kernel: str) -> tuple[float, float]:
    cfg = FrontEndConfig()
    fe = FrontEnd(cfg, rate, kernel=kernel)
    x = _test_signal(rate, seconds)
    block = None if block_ms is None else max(1, int(round(rate * block_ms / 1000.0)))
    _time_once(fe, x, block)  # warm-up
    runs = [_time_once(fe, x, block) for _ in range(repeats)]
    dt = statistics.median(r[0] for r in runs)
    return seconds / dt, runs[0][1] / seconds


def run(seconds: float = 10.0, json_path: str | None = None, repeats: int = 7,
        kernel: str = "auto") -> dict:
    """Measure and print real-time factors; optionally write them as JSON.

    Keys: ``rtf_16k``, ``rtf_8k``, ``rtf_48k`` (whole buffer in one call),
    ``rtf_16k_10ms`` (streaming in 10 ms blocks), ``events_per_s`` (16 kHz
    test signal), plus the settings used.
    """
    if repeats < 5:
        raise ValueError(f"repeats must be >= 5 for a meaningful median, got {repeats}")
    res: dict = {"seconds": seconds, "repeats": repeats, "machine": platform.machine(),
                 "python": platform.python_version()}
    fe = FrontEnd(FrontEndConfig(), 16000, kernel=kernel)
    res["kernel"] = fe.kernel
    res["rtf_16k"], res["events_per_s"] = _rtf(16000, seconds, repeats, None, kernel)
    res["rtf_8k"], _ = _rtf(8000, seconds, repeats, None, kernel)
    res["rtf_48k"], _ = _rtf(48000, seconds, repeats, None, kernel)
    res["rtf_16k_10ms"], _ = _rtf(16000, seconds, repeats, 10.0, kernel)
    for k in ("rtf_16k", "rtf_8k", "rtf_48k", "rtf_16k_10ms", "events_per_s"):
        res[k] = round(float(res[k]), 1)
    print(json.dumps(res, indent=2))
    if json_path is not None:
        with open(json_path, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=2)
            f.write("\n")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="audio length per run")
    ap.add_argument("--repeats", type=int, default=7, help="runs per measurement (median, >= 5)")
    ap.add_argument("--json", dest="json_path", default=None, help="write results here")
    ap.add_argument("--kernel", default="auto", choices=("auto", "c", "reference"))
    a = ap.parse_args(argv)
    run(seconds=a.seconds, json_path=a.json_path, repeats=a.repeats, kernel=a.kernel)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
