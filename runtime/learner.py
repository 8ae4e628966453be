"""The Python binding of csrc/learn.c: :class:`Learner`, the C twin of ``ReferenceLearner``.

The only module that calls the ``sw_learn_*`` functions.  Arrays are checked here (dtype,
shape, range) and again in C.  A learner is driven with what the core computed per step
(input events, hidden spikes, pre-reset membranes, refractory flags, readout membranes); it
never touches the core's weights: :meth:`Learner.commit` returns new int8 weights.
"""
from __future__ import annotations

import threading
from typing import Mapping

import numpy as np

from ._spikewire_c import ffi as _ffi, lib as _lib
from .config import CoreConfig, FixedPopulation
from .core import CoreBusyError, CoreError, CoreInputError
from .events import Events, as_channels as _as_channels
from .learning import MATRICES, SI_KINDS, LearningConfig, feedback_matrix, tables

_WHICH = {"in": _lib.SW_W_IN, "rec": _lib.SW_W_REC, "out": _lib.SW_W_OUT}
_RULE = {"eprop": _lib.SW_LEARN_EPROP, "superspike": _lib.SW_LEARN_SUPERSPIKE, "readout": _lib.SW_LEARN_READOUT}
_MASK = {"in": _lib.SW_LEARN_MASK_IN, "rec": _lib.SW_LEARN_MASK_REC, "out": _lib.SW_LEARN_MASK_OUT}
_KINDS = {"eI": 0, "eV": 1, "FI": 2, "FV": 3, "zI": 0, "zV": 1}
_KERNELS = {"fast": 0, "reference": 1}
_INPUT_CODES = {_lib.SW_E_SIZE, _lib.SW_E_PARAM, _lib.SW_E_WEIGHT, _lib.SW_E_CHANNEL,
                _lib.SW_E_EVENTS, _lib.SW_E_BUFFER}


def _rc(status: int, msg: str, ptr=None) -> None:
    if status != _lib.SW_OK:
        detail = _ffi.string(_lib.sw_learn_last_error(ptr if ptr is not None else _ffi.NULL)).decode()
        cls = CoreInputError if status in _INPUT_CODES else CoreError
        raise cls(status, f"{msg}: {detail}" if detail else msg)


class Learner:
    """A learner in C (docs/learning.md); same inputs and results as ``ReferenceLearner``."""

    def __init__(self, config: CoreConfig, hid: FixedPopulation, out: FixedPopulation,
                 lc: LearningConfig, weights: Mapping[str, np.ndarray]):
        if not isinstance(lc, LearningConfig):
            raise TypeError(f"lc must be a LearningConfig, got {type(lc).__name__}")
        self.config, self.lc = config, lc
        self._lock = threading.Lock()
        self._ptr = None
        t = tables(config, hid, out, lc)
        c = _ffi.new("sw_learn_config *")
        c.n_in, c.n_hid, c.n_out = config.n_in, config.n_hid, config.n_out
        c.rule = _RULE[lc.rule]
        c.learn_mask = sum(_MASK[m] for m in lc.learn)
        c.rate_in, c.rate_rec, c.rate_out = lc.rate_in, lc.rate_rec, lc.rate_out
        c.signal_shift, c.trace_shift, c.surrogate_log2 = lc.signal_shift, lc.trace_shift, lc.surrogate_log2
        c.target_hi, c.target_lo = lc.target_hi, lc.target_lo
        c.weights = _lib.SW_LEARN_SHADOW if lc.weights == "shadow" else _lib.SW_LEARN_STOCHASTIC
        c.sr_seed = lc.sr_seed
        c.eligibility = _lib.SW_LEARN_EVENTS if lc.eligibility == "events" else _lib.SW_LEARN_TRACES
        c.si, c.si_c_log2, c.si_xi_log2 = int(lc.si), lc.si_c_log2, lc.si_xi_log2
        keep = []

        def arr(a, dtype, ctype):
            a = np.ascontiguousarray(a, dtype=dtype)
            keep.append(a)
            return _ffi.from_buffer(ctype, a)

        c.pre_A, c.pre_G = arr(t.pre_A, np.int32, "int32_t[]"), arr(t.pre_G, np.int32, "int32_t[]")
        c.post_A, c.post_G, c.out_A, c.out_G = t.post_A, t.post_G, t.out_A, t.out_G
        c.g_hid, c.v_th = arr(t.g_hid, np.int32, "int32_t[]"), arr(t.v_th, np.int32, "int32_t[]")
        c.g_out = arr(t.g_out, np.int32, "int32_t[]") if config.n_out else _ffi.NULL
        if lc.feedback == "symmetric" or config.n_out == 0:
            c.feedback = _ffi.NULL
        else:
            fb = feedback_matrix(lc, np.zeros((config.n_hid, config.n_out), np.int8))
            c.feedback = arr(fb, np.int8, "int8_t[]")
        pp = _ffi.new("sw_learn **")
        _rc(_lib.sw_learn_create(c, pp), "cannot create learner")
        self._ptr = pp[0]
        for m in MATRICES:
            self.set_weights(m, weights[m])

    # -- lifetime --------------------------------------------------------------
    def close(self) -> None:
        with self._guard():
            if self._ptr is not None:
                _lib.sw_learn_destroy(self._ptr)
                self._ptr = None

    def __del__(self):
        try:
            if getattr(self, "_ptr", None) is not None:
                _lib.sw_learn_destroy(self._ptr)
                self._ptr = None
        except Exception:  # interpreter shutdown
            pass

    def _guard(self):
        lock = self._lock

        class _G:
            def __enter__(self_):
                if not lock.acquire(blocking=False):
                    raise CoreBusyError("Learner is being used from another thread")

            def __exit__(self_, *exc):
                lock.release()
        return _G()

    def _live(self):
        if self._ptr is None:
            raise CoreError(_lib.SW_E_BADCTX, "learner is closed")
        return self._ptr

    def _shape(self, m: str) -> tuple[int, int]:
        c = self.config
        if m not in _WHICH:
            raise ValueError(f"matrix must be one of {list(_WHICH)}, got {m!r}")
        return {"in": (c.n_in, c.n_hid), "rec": (c.n_hid, c.n_hid), "out": (c.n_hid, c.n_out)}[m]

    # -- weights and accumulators ---------------------------------------------------
    def set_weights(self, m: str, w: np.ndarray) -> None:
        """Weights of one matrix; re-initialises its accumulator (shadow w * 2^16, or 0)."""
        shape = self._shape(m)
        w = np.asarray(w)
        if w.shape != shape or not np.issubdtype(w.dtype, np.integer):
            raise ValueError(f"weights {m!r} must be integers of shape {shape}, got {w.dtype} {w.shape}")
        if w.size and (w.min() < -63 or w.max() > 63):
            raise ValueError(f"weights {m!r} must be in -63..63")
        w8 = np.ascontiguousarray(w, np.int8)
        with self._guard():
            p = self._live()
            _rc(_lib.sw_learn_set_weights(p, _WHICH[m], _ffi.from_buffer("int8_t[]", w8), w8.size),
                f"cannot set weights {m!r}", p)

    def weights(self, m: str) -> np.ndarray:
        w = np.zeros(self._shape(m), np.int8)
        with self._guard():
            p = self._live()
            _rc(_lib.sw_learn_get_weights(p, _WHICH[m], _ffi.from_buffer("int8_t[]", w, require_writable=True),
                                          w.size), "cannot get weights", p)
        return w

    def acc(self, m: str) -> np.ndarray:
        a = np.zeros(self._shape(m), np.int32)
        with self._guard():
            p = self._live()
            _rc(_lib.sw_learn_get_acc(p, _WHICH[m], _ffi.from_buffer("int32_t[]", a, require_writable=True),
                                      a.size), "cannot get accumulator", p)
        return a

    def set_acc(self, m: str, a: np.ndarray) -> None:
        a = np.ascontiguousarray(a, np.int32)
        if a.shape != self._shape(m):
            raise ValueError(f"accumulator {m!r} must have shape {self._shape(m)}, got {a.shape}")
        with self._guard():
            p = self._live()
            _rc(_lib.sw_learn_set_acc(p, _WHICH[m], _ffi.from_buffer("int32_t[]", a), a.size),
                "cannot set accumulator", p)

    def trace(self, m: str, kind: str) -> np.ndarray:
        """eI/eV/FI/FV of "in"/"rec" [rows x n_hid], or zI/zV of "out" [n_hid]."""
        if kind not in _KINDS or (m == "out") != (kind in ("zI", "zV")):
            raise ValueError(f"unknown trace {m!r}/{kind!r}")
        shape = (self.config.n_hid,) if m == "out" else self._shape(m)
        v = np.zeros(shape, np.int16)
        with self._guard():
            p = self._live()
            _rc(_lib.sw_learn_get_trace(p, _WHICH[m], _KINDS[kind],
                                        _ffi.from_buffer("int16_t[]", v, require_writable=True), v.size),
                "cannot read trace", p)
        return v

    # -- learning ---------------------------------------------------------------------
    @property
    def kernel(self) -> str:
        return getattr(self, "_kernel", "fast")

    @kernel.setter
    def kernel(self, name: str) -> None:
        if name not in _KERNELS:
            raise ValueError(f"kernel must be one of {list(_KERNELS)}, got {name!r}")
        with self._guard():
            p = self._live()
            _rc(_lib.sw_learn_set_kernel(p, _KERNELS[name]), "cannot set kernel", p)
            self._kernel = name

    def reset_traces(self) -> None:
        with self._guard():
            p = self._live()
            _rc(_lib.sw_learn_reset_traces(p), "cannot reset traces", p)

    def set_last_spikes(self, z: np.ndarray) -> None:
        """The hidden spikes of the step before the next :meth:`run` (0/1 [n_hid]); by default
        they are the last step of the previous run (none after create / reset_traces)."""
        z = np.ascontiguousarray(z, np.uint8)
        if z.shape != (self.config.n_hid,):
            raise ValueError(f"last spikes must have shape ({self.config.n_hid},), got {z.shape}")
        with self._guard():
            p = self._live()
            _rc(_lib.sw_learn_set_last_spikes(p, _ffi.from_buffer("uint8_t[]", z), z.size),
                "cannot set last spikes", p)

    def set_counters(self, steps: int, commits: int) -> None:
        """Restore the step and commit counters (a checkpoint; the commit counter seeds stochastic rounding)."""
        with self._guard():
            p = self._live()
            _rc(_lib.sw_learn_set_counters(p, int(steps), int(commits)), "cannot set counters", p)

    def set_target(self, modes: np.ndarray) -> None:
        modes = np.ascontiguousarray(modes, np.int8)
        if modes.shape != (self.config.n_out,):
            raise ValueError(f"target modes must have shape ({self.config.n_out},), got {modes.shape}")
        with self._guard():
            p = self._live()
            _rc(_lib.sw_learn_set_target(p, _ffi.from_buffer("int8_t[]", modes) if modes.size else _ffi.NULL,
                                         modes.size), "cannot set target", p)

    def run(self, events: Events, z: np.ndarray, v_pre: np.ndarray, refr: np.ndarray, y: np.ndarray) -> None:
        """T learning steps: events (CSR), z/refr [T x n_hid] 0/1, v_pre [T x n_hid], y [T x n_out]."""
        indptr = np.ascontiguousarray(events.indptr, np.int64)
        ch = _as_channels(events.channels)
        T = indptr.shape[0] - 1
        c = self.config
        z = np.ascontiguousarray(z, np.uint8)
        refr = np.ascontiguousarray(refr, np.uint8)
        v_pre = np.ascontiguousarray(v_pre, np.int16)
        y = np.ascontiguousarray(y, np.int16)
        for name, a, n in (("z", z, c.n_hid), ("v_pre", v_pre, c.n_hid), ("refr", refr, c.n_hid), ("y", y, c.n_out)):
            if a.shape != (T, n):
                raise ValueError(f"{name} must have shape ({T}, {n}), got {a.shape}")
        buf = lambda a, t: _ffi.from_buffer(t, a) if a.size else _ffi.NULL  # noqa: E731
        with self._guard():
            p = self._live()
            _rc(_lib.sw_learn_run(p, T, _ffi.from_buffer("int64_t[]", indptr), buf(ch, "int32_t[]"), ch.shape[0],
                                  buf(z, "uint8_t[]"), buf(v_pre, "int16_t[]"), buf(refr, "uint8_t[]"),
                                  buf(y, "int16_t[]")), "learning run failed", p)

    def flush(self) -> None:
        """Events form: credit every pending step now (the end of a stretch); else nothing."""
        with self._guard():
            p = self._live()
            _rc(_lib.sw_learn_flush(p), "cannot flush", p)

    def commit(self) -> dict[str, np.ndarray]:
        with self._guard():
            p = self._live()
            _rc(_lib.sw_learn_commit(p), "cannot commit", p)
        return {m: self.weights(m) for m in self.lc.learn}

    # -- synaptic intelligence (docs/learning.md "Consolidation") ---------------------------------
    def consolidate(self) -> None:
        """The end of a task: omega into the importance, the anchor moves to the current parameters."""
        with self._guard():
            p = self._live()
            _rc(_lib.sw_learn_consolidate(p), "cannot consolidate", p)

    def set_si(self, c_log2: int, xi_log2: int) -> None:
        """Change the consolidation strength c = 2^c_log2 and the damping xi = 2^xi_log2."""
        import dataclasses
        lc = dataclasses.replace(self.lc, si_c_log2=c_log2, si_xi_log2=xi_log2)   # validates
        with self._guard():
            p = self._live()
            _rc(_lib.sw_learn_set_si(p, lc.si_c_log2, lc.si_xi_log2), "cannot set si", p)
            self.lc = lc

    def si_state(self, m: str, kind: str) -> np.ndarray:
        """One synaptic-intelligence array of a learning matrix: prev, omega, importance, anchor (int32)."""
        if kind not in SI_KINDS:
            raise ValueError(f"si state must be one of {SI_KINDS}, got {kind!r}")
        a = np.zeros(self._shape(m), np.int32)
        with self._guard():
            p = self._live()
            _rc(_lib.sw_learn_get_si(p, _WHICH[m], SI_KINDS.index(kind),
                                     _ffi.from_buffer("int32_t[]", a, require_writable=True), a.size),
                "cannot read si state", p)
        return a

    def set_si_state(self, m: str, kind: str, v: np.ndarray) -> None:
        if kind not in SI_KINDS:
            raise ValueError(f"si state must be one of {SI_KINDS}, got {kind!r}")
        v = np.asarray(v)
        if v.shape != self._shape(m) or not np.issubdtype(v.dtype, np.integer):
            raise ValueError(f"si {kind} of {m!r} must be integers of shape {self._shape(m)}, got {v.dtype} {v.shape}")
        if v.size and (v.min() < -2**31 or v.max() >= 2**31):
            raise ValueError(f"si {kind} of {m!r} must be int32")
        v = np.ascontiguousarray(v, np.int32)
        with self._guard():
            p = self._live()
            _rc(_lib.sw_learn_set_si_state(p, _WHICH[m], SI_KINDS.index(kind), _ffi.from_buffer("int32_t[]", v),
                                           v.size), "cannot set si state", p)

    @property
    def counters(self) -> tuple[int, int]:
        s, k = _ffi.new("int64_t *"), _ffi.new("int64_t *")
        with self._guard():
            p = self._live()
            _rc(_lib.sw_learn_counters(p, s, k), "cannot read counters", p)
        return int(s[0]), int(k[0])
