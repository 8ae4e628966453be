"""Generate tests/golden/frontend_v1.txt: golden vectors that pin the audio front end.

Run from anywhere with spikewire installed:  python -P tests/golden/make_golden_frontend.py
(``--check``: compare the file with this machine's design and C kernel instead; tests/aarch64/run.sh
runs that in the arm64 CPython under qemu.)
Regenerate ONLY when the signal chain is changed on purpose (bump
frontend.ALGORITHM_VERSION, docs/frontend.md) and say so in the commit
message.  The file is read by tests/test_golden_frontend.py (the filter
design from the config, the C kernel and the numpy reference kernel) and by
tests/c/test_frontend.c (natively, under the sanitizers, with clang and on
aarch64 under qemu; tests/c/run.sh), so one file pins all of them.

Format: '#' lines are comments; otherwise whitespace-separated tokens.
  case NAME
  config JSON RATE          FrontEndConfig.to_dict() without spaces, input rate in Hz
                            (the C test skips both; pytest designs the params from them)
  ints n_channels n_stages step_samples max_spikes rs_up rs_down rs_taps rs_skip
       norm pcen_k pcen_alpha pcen_off pcen_eps
  floats preemph env_alpha power_scale log2_k floor_power log2_floor drive_scale tiny pcen_scale
                            (IEEE float32 bit patterns, 8 hex digits each)
  rs_coef <rs_up*rs_taps ints>
  sos <n_stages*5*n_channels float32 bit patterns in hex>   ([S x 5 x C], b0 b1 b2 a1 a2)
  signal N <N int16 samples>
  expect n_steps n_events FNV1A64_EVENTS
  counts <n_steps ints: events per step>
  end
The events are those of the whole signal in one process() call followed by
flush().  FNV1A64_EVENTS is FNV-1a 64 over (step, channel) of every event in
order, each as two little-endian int64 (as tests/c/test_frontend.c hashes).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import NamedTuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # golden_io, also under -P
from golden_io import fnv1a64, ints, write_golden  # noqa: E402

from spikewire.audio import read_wav_int16
from spikewire.assets import demo_recording
from spikewire.frontend import (Events, FrontEndConfig, _CKernel, _kernel_params, _KernelParams, _load_c,
                                _RefKernel)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "frontend_v1.txt")

INT_FIELDS = ("n_channels", "n_stages", "step_samples", "max_spikes", "rs_up", "rs_down", "rs_taps", "rs_skip",
              "norm", "pcen_k", "pcen_alpha", "pcen_off", "pcen_eps")
FLOAT_FIELDS = ("preemph", "env_alpha", "power_scale", "log2_k", "floor_power", "log2_floor", "drive_scale",
                "tiny", "pcen_scale")


def events_hash(indptr: np.ndarray, channels: np.ndarray) -> int:
    steps = np.repeat(np.arange(len(indptr) - 1, dtype=np.int64), np.diff(indptr))
    pairs = np.stack([steps, np.asarray(channels, np.int64)], axis=1)
    return fnv1a64(pairs.astype("<i8").tobytes())


def run_kernel(kernel, x: np.ndarray):
    """(indptr, channels) of the whole signal in one process() call, then flush()."""
    a, b = kernel.process(x), kernel.flush()
    indptr = np.concatenate([a.indptr, a.indptr[-1] + b.indptr[1:]])
    return indptr, np.concatenate([a.channels, b.channels]).astype(np.int32)


def c_kernel(kp: _KernelParams):
    return _CKernel(kp, _load_c())


class GoldenCase(NamedTuple):
    name: str
    config: FrontEndConfig
    rate: int
    params: _KernelParams
    signal: np.ndarray  # int16
    n_steps: int
    n_events: int
    events_hash: int
    counts: np.ndarray  # events per step


def read_golden(path: str = OUT) -> list[GoldenCase]:
    toks = []
    with open(path) as f:
        for line in f:
            if not line.startswith("#"):
                toks.extend(line.split())
    it = iter(toks)

    def word(w):
        got = next(it)
        if got != w:
            raise ValueError(f"golden file: expected {w!r}, got {got!r}")

    def ints(n, dtype=np.int64):
        return np.array([int(next(it)) for _ in range(n)], dtype=dtype)

    def floats(n):
        return np.array([int(next(it), 16) for _ in range(n)], dtype=np.uint32).view(np.float32)

    cases = []
    for w in it:
        if w != "case":
            raise ValueError(f"golden file: expected 'case', got {w!r}")
        name = next(it)
        word("config")
        cfg = FrontEndConfig.from_dict(json.loads(next(it)))
        rate = int(next(it))
        word("ints")
        iv = dict(zip(INT_FIELDS, (int(v) for v in ints(len(INT_FIELDS)))))
        word("floats")
        fv = dict(zip(FLOAT_FIELDS, floats(len(FLOAT_FIELDS))))
        word("rs_coef")
        coef = ints(iv["rs_up"] * iv["rs_taps"], np.int16).reshape(iv["rs_up"], iv["rs_taps"])
        word("sos")
        sos = floats(iv["n_stages"] * 5 * iv["n_channels"]).reshape(iv["n_stages"], 5, iv["n_channels"])
        word("signal")
        x = ints(int(next(it)), np.int16)
        word("expect")
        n_steps, n_events, h = int(next(it)), int(next(it)), int(next(it), 16)
        word("counts")
        counts = ints(n_steps)
        word("end")
        cases.append(GoldenCase(name, cfg, rate, _KernelParams(rs_coef=coef, sos=sos, **iv, **fv), x,
                                n_steps, n_events, h, counts))
    return cases


def check_events(case: GoldenCase, indptr, channels) -> None:
    """AssertionError naming the first difference between these events and the golden ones."""
    indptr, channels = np.asarray(indptr), np.asarray(channels)
    assert len(indptr) - 1 == case.n_steps, f"{case.name}: {len(indptr) - 1} steps, golden {case.n_steps}"
    assert len(channels) == case.n_events, f"{case.name}: {len(channels)} events, golden {case.n_events}"
    bad = np.flatnonzero(np.diff(indptr) != case.counts)
    assert bad.size == 0, f"{case.name}: events per step differ first at step {bad[0] if bad.size else -1}"
    h = events_hash(indptr, channels)
    assert h == case.events_hash, f"{case.name}: events hash {h:016x}, golden {case.events_hash:016x}"


def check_design(case: GoldenCase) -> None:
    """AssertionError unless the params designed here from the case's config are the stored ones, bit for bit."""
    got, kp = _kernel_params(case.config, case.rate), case.params
    for f in INT_FIELDS:
        assert int(getattr(got, f)) == int(getattr(kp, f)), f"{case.name}: {f}"
    for f in FLOAT_FIELDS:
        a, b = np.float32(getattr(got, f)).view(np.uint32), np.float32(getattr(kp, f)).view(np.uint32)
        assert a == b, f"{case.name}: {f} {a:08x}, golden {b:08x}"
    assert np.array_equal(got.rs_coef, kp.rs_coef), f"{case.name}: rs_coef"
    n = int(np.sum(np.asarray(got.sos, np.float32).view(np.uint32) != kp.sos.view(np.uint32)))
    assert n == 0, f"{case.name}: {n} sos coefficients differ"


def check_file(path: str = OUT) -> int:
    """``--check``: every case's design and C kernel events on this machine; 0 if all match."""
    failed = 0
    for case in read_golden(path):
        try:
            check_design(case)
            check_events(case, *run_kernel(c_kernel(case.params), case.signal))
        except AssertionError as e:
            failed += 1
            print(f"  FAIL {e}")
        else:
            print(f"  golden {case.name}: {case.n_steps} steps, {case.n_events} events ok")
    return 1 if failed else 0


def speech(n: int) -> tuple[np.ndarray, int]:
    """n samples of the bundled digits recording (8 kHz), from just before its loudest 100 ms."""
    x, rate = read_wav_int16(demo_recording())
    w = rate // 10
    energy = np.convolve(x.astype(np.float64) ** 2, np.ones(w), "valid")
    start = max(0, int(np.argmax(energy)) - n // 3)
    return np.ascontiguousarray(x[start:start + n]), rate


def synthetic(rate: int, seconds: float) -> np.ndarray:
    """Silence, a rising chirp with noise, a clipped full-scale square burst, a quiet tone and DC."""
    n = int(rate * seconds)
    t = np.arange(n) / rate
    rng = np.random.default_rng([20261202, rate])
    f = 150.0 + (rate / 2.5 - 150.0) * t / seconds
    x = 0.3 * np.sin(2 * np.pi * np.cumsum(f) / rate) + 0.02 * rng.standard_normal(n)
    x[: n // 10] = 0.0
    sq = slice(n // 2, n // 2 + n // 10)
    x[sq] = np.sign(np.sin(2 * np.pi * 440.0 * t[sq])) * 1.5
    q = slice(7 * n // 10, 8 * n // 10)
    x[q] = 0.001 * np.sin(2 * np.pi * 1000.0 * t[q])
    x[9 * n // 10:] = 0.25
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)


def cases():
    # the front end of kws-digits v2 (FSDD only, log), pinned here so that a retrained shipped model
    # does not move this record (kws-digits v3 listens through PCEN: the pcen cases cover that path)
    kws = FrontEndConfig(step_ms=4.0, max_rate_hz=400.0, max_spikes_per_step=8)
    s, s_rate = speech(4000)
    return [
        ("default_8k_speech", FrontEndConfig(), s_rate, s),
        ("pcen_8k_speech", FrontEndConfig(normalize="pcen"), s_rate, s),
        ("default_16k_resampled", FrontEndConfig(), 16000, synthetic(16000, 0.3)),
        ("kws_digits_12k", kws, 12000, synthetic(12000, 0.4)),
        ("pcen_erb_16k", dataclasses.replace(FrontEndConfig(), normalize="pcen", scale="erb", n_channels=32,
                                             filter_stages=2, pcen_alpha=0.8, pcen_ms=100.0),
         16000, synthetic(16000, 0.3)),
    ]


def f32hex(a) -> list[str]:
    return [f"{int(u):08x}" for u in np.asarray(a, np.float32).ravel().view(np.uint32)]


def main() -> None:
    lines = []
    for name, cfg, rate, x in cases():
        kp = _kernel_params(cfg, rate)
        ip, ch = run_kernel(c_kernel(kp), x)
        rip, rch = run_kernel(_RefKernel(kp), x)
        assert np.array_equal(ip, rip) and np.array_equal(ch, rch), f"{name}: C and numpy reference differ"
        assert len(ch) > 100, f"{name}: only {len(ch)} events"
        counts = np.diff(ip)
        print(f"{name}: {len(x)} samples at {rate} Hz -> {len(counts)} steps, {len(ch)} events")
        lines += [f"case {name}",
                  f"config {json.dumps(cfg.to_dict(), separators=(',', ':'))} {rate}",
                  "ints " + ints([getattr(kp, f) for f in INT_FIELDS]),
                  "floats " + " ".join(f32hex([getattr(kp, f) for f in FLOAT_FIELDS])),
                  "rs_coef " + ints(kp.rs_coef),
                  "sos " + " ".join(f32hex(kp.sos)),
                  f"signal {len(x)} " + ints(x),
                  f"expect {len(counts)} {len(ch)} {events_hash(ip, ch):016x}",
                  "counts " + ints(counts),
                  "end"]
    write_golden(OUT, "spikewire front-end golden vectors v1 -- pins the audio front end (docs/frontend.md)",
                 "make_golden_frontend.py", "C kernel and numpy reference agreed", lines)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        sys.exit(check_file())
    main()
