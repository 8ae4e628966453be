"""The ``spikewire`` command line.

Subcommands are thin: they parse flags, set up logging and call into the
runtime.  Library code never prints; only this module writes to stdout.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np

log = logging.getLogger("spikewire")


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------------------
# core demo: a small random network on the fixed-point core, synthetic input

def cmd_core_demo(args: argparse.Namespace) -> int:
    from .config import Chip, CoreConfig
    from .core import Core, Events

    rng = np.random.default_rng(args.seed)
    cfg = CoreConfig(n_in=32, n_hid=64, n_out=4, preset="bss2", shift_in=6, shift_rec=5, shift_out=6)
    chip = Chip(seed=args.seed, threshold=0.05, decay=0.05, gain=0.1)
    core = Core(cfg, chip)
    core.set_weights("in", rng.integers(-20, 48, (32, 64)).astype(np.int8))
    w_rec = rng.integers(-30, 31, (64, 64)).astype(np.int8)
    np.fill_diagonal(w_rec, 0)
    core.set_weights("rec", w_rec)
    core.set_weights("out", rng.integers(-63, 64, (64, 4)).astype(np.int8))
    # synthetic "audio": a moving band of active channels, 100 ms per sweep
    T = args.steps
    rate = np.zeros((T, 32))
    for t in range(T):
        centre = (t // 3) % 32
        rate[t, max(0, centre - 2):centre + 3] = 0.3
    raster = rng.random((T, 32)) < rate
    events = Events.from_raster(raster)
    block = 100
    print(json.dumps({"event": "core_demo", "network": "32 in -> 64 recurrent LIF -> 4 readout",
                      "preset": cfg.preset, "chip_seed": chip.seed, "steps": T}))
    t0 = time.perf_counter()
    for b in range(0, T, block):
        n = min(block, T - b)
        sub = Events(events.indptr[b:b + n + 1] - events.indptr[b],
                     events.channels[events.indptr[b]:events.indptr[b + n]])
        out = core.run(sub)
        print(json.dumps({
            "event": "block", "t_ms": [b, b + n], "input_spikes": int(len(sub.channels)),
            "hidden_spikes": out.n_spikes,
            "hidden_rate_hz": round(out.n_spikes / (n * 64) * 1000, 1),
            "readout_cadc_mean": [round(float(x), 1) for x in out.cadc.mean(axis=0)],
        }))
    dt = time.perf_counter() - t0
    print(json.dumps({"event": "done", "steps": T, "wall_s": round(dt, 4),
                      "real_time_factor": round(T / 1000 / dt, 1)}))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "core":
        from . import bench_core
        bench_core.run(args.json, args.runs, args.kernel)
        return 0
    print(f"unknown benchmark {args.what!r}", file=sys.stderr)
    return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spikewire", description="Spiking neural networks on a bit-exact "
                                "BrainScaleS-2-like fixed-point core.")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("core-demo", help="run a small random network on the core with synthetic input")
    d.add_argument("--steps", type=int, default=1000)
    d.add_argument("--seed", type=int, default=1)
    d.set_defaults(fn=cmd_core_demo)

    b = sub.add_parser("bench", help="benchmarks (print JSON; never part of the tests)")
    b.add_argument("what", choices=["core"])
    b.add_argument("--json", metavar="PATH")
    b.add_argument("--runs", type=int, default=5)
    b.add_argument("--kernel", choices=["fast", "reference"], default="fast")
    b.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
