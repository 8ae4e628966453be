"""Plain numpy reference of the core: the same integer arithmetic as csrc/core.c.

This is the executable form of docs/fixed-point.md ("Update equations").  It
is written for clarity, not speed: one numpy expression per equation, a
Python loop over time steps.  Tests require it to agree with the C core bit
for bit; it is also the model the torch training code is checked against.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import stateblob
from .config import CoreConfig, FixedPopulation, splitmix64_at

_I64 = np.int64


def floor_shr(x: np.ndarray, s: int) -> np.ndarray:
    """floor(x / 2^s) (numpy's >> on signed ints is arithmetic, i.e. floor)."""
    return np.right_shift(x, s)


def trunc_shr(x: np.ndarray, s: int) -> np.ndarray:
    """x / 2^s rounded toward zero."""
    return np.where(x >= 0, x >> s, -((-x) >> s))


def away_shr(x: np.ndarray, s: int) -> np.ndarray:
    """x / 2^s rounded away from zero."""
    m = (1 << s) - 1
    return np.where(x >= 0, (x + m) >> s, -(((-x) + m) >> s))


def sat16(x: np.ndarray) -> np.ndarray:
    return np.clip(x, -32768, 32767)


def noise(seed: int, step: int, n: int, amp: int) -> np.ndarray:
    """Membrane noise of hidden neurons 0..n-1 at ``step``: uniform in -amp..amp."""
    ctr = np.uint64(step) * np.uint64(n) + np.arange(n, dtype=np.uint64)
    hi = splitmix64_at(seed, ctr) >> np.uint64(32)
    with np.errstate(over="ignore"):
        v = (hi * np.uint64(2 * amp + 1)) >> np.uint64(32)
    return v.astype(_I64) - amp


def cadc(v: np.ndarray, base: int, shift: int) -> np.ndarray:
    return np.clip(floor_shr(v.astype(_I64) - base, shift), 0, 255).astype(np.uint8)


def max_steps(n_hid: int) -> int:
    """The step limit of docs/fixed-point.md: min(2^63 - 1, floor((2^64 - 1) / n_hid))."""
    return min(2**63 - 1, (2**64 - 1) // n_hid)


class StepEx(NamedTuple):
    """The observables of one step (or, stacked, of a block), as ``sw_core_run_ex`` hands them out."""
    spikes: np.ndarray  # uint8 [n_hid] 0/1
    hid_v: np.ndarray  # int16 [n_hid] membrane after the step (after reset)
    hid_v_pre: np.ndarray  # int16 [n_hid] membrane before reset (R while refractory)
    hid_ref: np.ndarray  # uint8 [n_hid] refractory counter after the step
    hid_cadc: np.ndarray  # uint8 [n_hid] CADC code of hid_v
    out_v: np.ndarray  # int16 [n_out] readout membrane
    cadc: np.ndarray  # uint8 [n_out] CADC code of out_v


_EX_DTYPES = (np.uint8, np.int16, np.int16, np.uint8, np.uint8, np.int16, np.uint8)


class ReferenceCore:
    """Numpy twin of :class:`spikewire.core.Core` (same constructor inputs, same outputs)."""

    def __init__(self, config: CoreConfig, hid: FixedPopulation, out: FixedPopulation):
        self.config = config
        self.hid = {k: v.astype(_I64) for k, v in hid.arrays().items()}
        self.out = {k: v.astype(_I64) for k, v in out.arrays().items()}
        self.w_in = np.zeros((config.n_in, config.n_hid), np.int8)
        self.w_rec = np.zeros((config.n_hid, config.n_hid), np.int8)
        self.w_out = np.zeros((config.n_hid, config.n_out), np.int8)
        self.reset()

    def reset(self) -> None:
        c = self.config
        self.h_I = np.zeros(c.n_hid, _I64)
        self.h_V = self.hid["v_leak"].copy()
        self.h_ref = np.zeros(c.n_hid, _I64)
        self.z = np.zeros(c.n_hid, bool)
        self.o_I = np.zeros(c.n_out, _I64)
        self.o_V = self.out["v_leak"].copy()
        self.steps = 0

    def step(self, channels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One step; returns (hidden spikes uint8, hidden V int16, readout V int16, CADC uint8)."""
        o = self.step_ex(channels)
        return o.spikes, o.hid_v, o.out_v, o.cadc

    @property
    def max_steps(self) -> int:
        """Steps allowed since reset: the noise counter steps * n_hid stays below 2^64."""
        return max_steps(self.config.n_hid)

    def step_ex(self, channels: np.ndarray) -> StepEx:
        """One step with every observable of ``sw_core_run_ex`` (see :class:`StepEx`)."""
        c, h, o = self.config, self.hid, self.out
        if self.steps >= self.max_steps:
            raise OverflowError(f"step counter at its limit {self.max_steps} (the noise stream would repeat); reset")
        channels = np.asarray(channels, dtype=np.int64)
        # 1. synaptic input: rows of the active input channels and of last step's spikes
        acc_in = self.w_in[channels].astype(_I64).sum(axis=0) if channels.size else np.zeros(c.n_hid, _I64)
        acc_rec = self.w_rec[self.z].astype(_I64).sum(axis=0)
        tot = acc_in * (1 << c.shift_in) + acc_rec * (1 << c.shift_rec)
        inp = trunc_shr(tot * h["g_syn"], 14)
        # 2. current: decay rounded toward zero, plus input, saturated
        self.h_I = sat16(trunc_shr(self.h_I * h["decay_syn"], 15) + inp)
        # 3. membrane: step toward L + I, rounded away from zero; refractory clamp
        refr = self.h_ref > 0
        e = sat16(h["v_leak"] + self.h_I - self.h_V)
        V = self.h_V + away_shr(e * h["gain_mem"], 15)
        if c.noise_amp > 0:
            V = V + noise(c.noise_seed, self.steps, c.n_hid, c.noise_amp)
        V = sat16(V)
        v_pre = np.where(refr, h["v_reset"], V)  # the value compared with the threshold
        z = (~refr) & (v_pre >= h["v_th"])
        V = np.where(refr | z, h["v_reset"], v_pre)
        self.h_ref = np.where(refr, self.h_ref - 1, np.where(z, c.t_ref_steps, 0))
        self.h_V = V
        self.z = z
        # 4. readout: same-step hidden spikes, never spikes itself
        acc_out = self.w_out[z].astype(_I64).sum(axis=0)
        oin = trunc_shr(acc_out * (1 << c.shift_out) * o["g_syn"], 14)
        self.o_I = sat16(trunc_shr(self.o_I * o["decay_syn"], 15) + oin)
        e = sat16(o["v_leak"] + self.o_I - self.o_V)
        self.o_V = sat16(self.o_V + away_shr(e * o["gain_mem"], 15))
        self.steps += 1
        return StepEx(z.astype(np.uint8), V.astype(np.int16), v_pre.astype(np.int16),
                      self.h_ref.astype(np.uint8), cadc(V, c.cadc_base, c.cadc_shift),
                      self.o_V.astype(np.int16), cadc(self.o_V, c.cadc_base, c.cadc_shift))

    def run(self, indptr: np.ndarray, channels: np.ndarray):
        """Steps over a CSR event list; returns stacked (spikes, hid_v, out_v, cadc)."""
        o = self.run_ex(indptr, channels)
        return o.spikes, o.hid_v, o.out_v, o.cadc

    def run_ex(self, indptr: np.ndarray, channels: np.ndarray) -> StepEx:
        """Steps over a CSR event list; every :class:`StepEx` field stacked to [T x n]."""
        T = len(indptr) - 1
        outs = [self.step_ex(channels[indptr[t]:indptr[t + 1]]) for t in range(T)]
        c = self.config
        if not outs:
            sizes = (c.n_hid,) * 5 + (c.n_out,) * 2
            return StepEx(*(np.zeros((0, n), dt) for n, dt in zip(sizes, _EX_DTYPES)))
        return StepEx(*(np.stack(x) for x in zip(*outs)))

    # -- state: the same version-2 blob as sw_core_save_state (runtime/stateblob.py) --
    def save_state(self) -> bytes:
        c = self.config
        core = stateblob.CoreSection(c.n_in, c.n_hid, c.n_out, self.steps, self.h_I, self.h_V,
                                     self.h_ref, self.z, self.o_I, self.o_V)
        w = self.w_in.tobytes() + self.w_rec.tobytes() + self.w_out.tobytes()
        return stateblob.build([stateblob.Section(stateblob.CORE, True, stateblob.encode_core(core)),
                                stateblob.Section(stateblob.WGHT, True, w)])

    def load_state(self, blob: bytes) -> None:
        """Restore a blob of this core's sizes; the checks of sw_core_load_state, in Python."""
        c = self.config
        secs = {}
        for s in stateblob.parse(blob):
            if s.tag in (stateblob.CORE, stateblob.WGHT):
                secs[s.tag] = s.payload
            elif s.required:
                raise stateblob.StateBlobError(f"state blob has a required section {s.tag!r} this version does not know")
        if set(secs) != {stateblob.CORE, stateblob.WGHT}:
            raise stateblob.StateBlobError("state blob lacks its CORE or WGHT section")
        core = stateblob.decode_core(secs[stateblob.CORE])
        nw = c.n_in * c.n_hid + c.n_hid * c.n_hid + c.n_hid * c.n_out
        if (core.n_in, core.n_hid, core.n_out) != (c.n_in, c.n_hid, c.n_out) or len(secs[stateblob.WGHT]) != nw:
            raise stateblob.StateBlobError("state blob was saved from a core of other sizes")
        if not 0 <= core.steps <= self.max_steps:
            raise stateblob.StateBlobError("state blob has a step count outside 0..the step limit")
        if (core.h_ref > c.t_ref_steps).any() or (core.z > 1).any():
            raise stateblob.StateBlobError("state blob has a refractory counter or spike flag out of range")
        w = np.frombuffer(secs[stateblob.WGHT], np.int8)
        if w.size and np.abs(w.astype(_I64)).max() > 63:
            raise stateblob.StateBlobError("state blob has a weight outside -63..63")
        a, b = c.n_in * c.n_hid, c.n_in * c.n_hid + c.n_hid * c.n_hid
        self.w_in = w[:a].reshape(c.n_in, c.n_hid).copy()
        self.w_rec = w[a:b].reshape(c.n_hid, c.n_hid).copy()
        self.w_out = w[b:].reshape(c.n_hid, c.n_out).copy()
        self.steps = core.steps
        self.h_I, self.h_V = core.h_I.astype(_I64), core.h_V.astype(_I64)
        self.h_ref, self.z = core.h_ref.astype(_I64), core.z.astype(bool)
        self.o_I, self.o_V = core.o_I.astype(_I64), core.o_V.astype(_I64)
