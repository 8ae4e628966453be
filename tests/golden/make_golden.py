"""Generate tests/golden/core_v1.txt: golden vectors that pin the core's arithmetic.

Run from the repository root:  python tests/golden/make_golden.py
Regenerate ONLY when the arithmetic is changed on purpose (docs/fixed-point.md),
and say so in the commit message.  The file is read by tests/test_golden.py
(C core and numpy reference) and by tests/c/test_core.c (natively, under the
sanitizers, and on aarch64 under qemu), so one file pins all of them.

Format: '#' lines are comments; otherwise whitespace-separated tokens.
  case NAME
  config n_in n_hid n_out preset shift_in shift_rec shift_out t_ref noise_amp noise_seed cadc_base cadc_shift
  hidden  <6 x n_hid ints: decay_syn gain_mem v_leak v_th v_reset g_syn>
  readout <6 x n_out ints, same order>
  w_in <n_in*n_hid ints>  w_rec <n_hid*n_hid ints>  w_out <n_hid*n_out ints>
  events T <T+1 indptr ints> <n_events channel ints>   (n_events = indptr[T])
  expect n_spikes FNV1A64_OUTPUTS FNV1A64_STATE
  end
FNV1A64_OUTPUTS is FNV-1a 64 over: hidden spikes (T*n_hid bytes), hidden membranes
(T*n_hid int16 little-endian), readout membranes (T*n_out int16 LE), CADC codes
(T*n_out bytes).  FNV1A64_STATE is over the state blob (version 2, docs/model-format.md) after the run.
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # golden_io, also under -P

from golden_io import fnv1a64, ints, write_golden  # noqa: E402
from spikewire.config import Chip, CoreConfig, PopulationConfig  # noqa: E402
from spikewire.core import Core, Events  # noqa: E402
from spikewire.reference import ReferenceCore  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "core_v1.txt")


def output_hash(spikes, hid_v, out_v, cadc) -> int:
    le = lambda a: np.ascontiguousarray(a, dtype="<i2").tobytes()  # noqa: E731
    return fnv1a64(np.ascontiguousarray(spikes, np.uint8).tobytes(), le(hid_v), le(out_v),
                   np.ascontiguousarray(cadc, np.uint8).tobytes())


def cases():
    """(name, config, chip, weight seed, T, event probability, max repeats)."""
    yield ("ideal_small", CoreConfig(n_in=12, n_hid=10, n_out=3, t_ref_steps=2), None, 1, 200, 0.2, 1)
    yield ("chip_noise", CoreConfig(
        n_in=20, n_hid=24, n_out=4, t_ref_steps=3, noise_amp=300, noise_seed=0xDEADBEEF12345678,
        hidden=PopulationConfig(tau_syn_ms=4.0, tau_mem_ms=12.0, v_leak=-200, v_reset=-600, v_th=3000)),
        Chip(seed=7, threshold=0.1, leak=0.05, decay=0.1, gain=0.2), 2, 300, 0.15, 2)
    yield ("bss2_kws_like", CoreConfig(
        n_in=64, n_hid=128, n_out=10, preset="bss2", shift_in=7, shift_rec=6, shift_out=7),
        Chip(seed=11, threshold=0.05, decay=0.05, gain=0.1), 3, 250, 0.1, 1)
    yield ("saturation", CoreConfig(
        n_in=8, n_hid=6, n_out=2, shift_in=14, shift_rec=14, shift_out=14, t_ref_steps=0,
        hidden=PopulationConfig(tau_syn_ms=50.0, tau_mem_ms=2.0, v_th=20000, v_reset=-32768, g_syn=1.9),
        readout=PopulationConfig(tau_syn_ms=100.0, tau_mem_ms=1.0, g_syn=0.3)),
        None, 4, 120, 0.5, 3)


def build(name, cfg, chip, wseed, T, p, reps):
    rng = np.random.default_rng([20261123, wseed])
    w = {
        "in": rng.integers(-63, 64, (cfg.n_in, cfg.n_hid)).astype(np.int8),
        "rec": rng.integers(-63, 64, (cfg.n_hid, cfg.n_hid)).astype(np.int8),
        "out": rng.integers(-63, 64, (cfg.n_hid, cfg.n_out)).astype(np.int8),
    }
    raster = (rng.random((T, cfg.n_in)) < p) * rng.integers(1, reps + 1, (T, cfg.n_in))
    return w, Events.from_raster(raster)


def main() -> None:
    lines = []
    for name, cfg, chip, wseed, T, p, reps in cases():
        core = Core(cfg, chip)
        w, ev = build(name, cfg, chip, wseed, T, p, reps)
        ref = ReferenceCore(cfg, *core.params)
        for k, m in w.items():
            core.set_weights(k, m)
            setattr(ref, "w_" + k, m)
        out = core.run(ev, record_hidden_v=True)
        r = ref.run(ev.indptr, ev.channels)
        for a, b in zip((out.spikes, out.hid_v, out.out_v, out.cadc), r):
            assert np.array_equal(a, b), f"{name}: C and reference disagree; fix before generating"
        h_out = output_hash(out.spikes, out.hid_v, out.out_v, out.cadc)
        h_state = fnv1a64(core.save_state())
        hid, rd = core.params
        preset = 1 if cfg.preset == "bss2" else 0
        lines += [
            f"case {name}",
            f"config {cfg.n_in} {cfg.n_hid} {cfg.n_out} {preset} {cfg.shift_in} {cfg.shift_rec} {cfg.shift_out} "
            f"{cfg.t_ref_steps} {cfg.noise_amp} {cfg.noise_seed} {cfg.cadc_base} {cfg.cadc_shift}",
            "hidden " + " ".join(ints(a) for a in hid.arrays().values()),
            "readout " + " ".join(ints(a) for a in rd.arrays().values()),
            "w_in " + ints(w["in"]),
            "w_rec " + ints(w["rec"]),
            "w_out " + ints(w["out"]),
            f"events {T} {ints(ev.indptr)} {ints(ev.channels)}",
            f"expect {out.n_spikes} {h_out:016x} {h_state:016x}",
            "end",
        ]
        print(f"{name}: {out.n_spikes} spikes over {T} steps, outputs {h_out:016x}")
    write_golden(OUT, "spikewire golden vectors v1 -- pins the fixed-point arithmetic (docs/fixed-point.md)",
                 "make_golden.py", "C core and numpy reference agreed", lines)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
