"""Golden record of the whole pipeline through the Python API: front end, core, decision.

The bundled digits recording (runtime/data/digits.wav, 8 kHz) goes through a frozen copy of
kws-digits v2.2 (tests/golden/pipeline_v1.swm, so retraining the shipped model does not move
this record) with the C kernels: the front end in 100 ms blocks (block size does not change
the events, tests/test_frontend.py), the core in one run, the decider. ``compute()`` returns
sha256 digests of each stage's output plus the keyword list; tests/golden/pipeline_v1.json
stores them. The same file is checked on x86-64 (tests/test_golden_pipeline.py) and by an
arm64 CPython under qemu-user importing the cross-built extension (tests/aarch64/run.sh).

The file names the commit it was generated from (``generated_by``; not compared by --check).
Regenerate (only when the arithmetic changes on purpose, and say why in the commit):
    python -P tests/golden/make_pipeline_golden.py --write
Check (exit 1 on a difference; what tests/aarch64/run.sh runs under qemu):
    python -P tests/golden/make_pipeline_golden.py --check
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "pipeline_v1.json")
MODEL = os.path.join(HERE, "pipeline_v1.swm")
BLOCK = 800  # input samples per front-end call (100 ms at 8 kHz)


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(a.dtype.newbyteorder("<").str.encode() + b"|" + str(a.shape).encode() + b"|")
        h.update(a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


def _file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def compute() -> dict:
    """The record for this machine (the C kernels are required: no silent numpy fallback)."""
    from spikewire.audio import read_wav_int16
    from spikewire.assets import demo_recording
    from spikewire.events import Events
    from spikewire.frontend import FrontEnd
    from spikewire.model import load

    model = load(MODEL)
    x, rate = read_wav_int16(demo_recording())
    fe = FrontEnd(model.frontend, rate, kernel="c")
    ev = Events.concat([fe.process(x[i:i + BLOCK]) for i in range(0, x.shape[0], BLOCK)] + [fe.flush()])
    core = model.make_core()
    out = core.run(ev)
    dec = model.decider()
    kws = dec.update(out.cadc) + dec.flush()
    return {
        "model": {"file": os.path.basename(MODEL), "sha256": _file_digest(MODEL)},
        "input": {"samples": int(x.shape[0]), "rate": int(rate), "sha256": _digest(x)},
        "frontend": {"steps": ev.n_steps, "events": ev.n_events,
                     "sha256": _digest(np.asarray(ev.indptr, np.int64), np.asarray(ev.channels, np.int32))},
        "core": {"kernel": core.kernel, "hidden_spikes": int(out.n_spikes),
                 "sha256": _digest(out.spikes, out.out_v, out.cadc)},
        "keywords": [{**k.to_dict(), "step": int(k.step)} for k in kws],
    }


GENERATED_BY = "generated_by"  # {"script", "commit"}: provenance, not part of the record


def git_describe() -> str:
    """The commit the record is generated from (``-dirty``: with uncommitted changes)."""
    r = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], capture_output=True,
                       text=True, cwd=HERE, timeout=30)
    return r.stdout.strip() or "unknown (not a git checkout)"


def load_record(path: str = OUT) -> dict:
    """The stored record without its provenance (what :func:`compute` is compared with)."""
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    record.pop(GENERATED_BY, None)
    return record


def differences(got: dict, want: dict, path: str = "") -> list[str]:
    """Human-readable differences between two records (empty: identical)."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for k in sorted(set(want) | set(got)):
            if k not in got or k not in want:
                out.append(f"{path}{k}: {'missing' if k not in got else 'unexpected'}")
            else:
                out += differences(got[k], want[k], f"{path}{k}.")
        return out
    return [] if got == want else [f"{path.rstrip('.')}: got {got!r}, want {want!r}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", action="store_true", help=f"write {os.path.basename(OUT)}")
    g.add_argument("--check", action="store_true", help="compare with the stored record")
    args = ap.parse_args(argv)
    got = compute()
    if args.write:
        record = {**got, GENERATED_BY: {"script": "tests/golden/make_pipeline_golden.py",
                                        "commit": git_describe()}}
        with open(OUT, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.write("\n")
        print(f"wrote {OUT}")
        return 0
    want = load_record()
    diff = differences(got, want)
    for d in diff:
        print(f"pipeline golden ({platform.machine()}): {d}", file=sys.stderr)
    if not diff:
        print(f"pipeline golden ({platform.machine()}): identical to {os.path.basename(OUT)} "
              f"({got['frontend']['events']} input events, {got['core']['hidden_spikes']} hidden spikes, "
              f"{len(got['keywords'])} keywords)")
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
