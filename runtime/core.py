"""The Python binding of the C core.  The only module that touches ``_ffi``/``_lib``.

Every C status passes through :func:`_check_rc`.  Arrays are handed to C
zero-copy with ``ffi.from_buffer`` after their dtype, shape, contiguity and
writability were checked here (cffi checks none of the first three).

Threading: cffi releases the GIL during C calls, so a :class:`Core` could be
entered from two threads at once; that would corrupt its state.  Each call
takes a non-blocking lock and raises :class:`CoreBusyError` instead.
"""
from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np

from ._spikewire_c import ffi as _ffi, lib as _lib
from .config import Chip, CoreConfig, FixedPopulation, fixed_params
from .events import MAX_EVENTS_PER_STEP, Events, as_channels as _as_channels

W_IN, W_REC, W_OUT = "in", "rec", "out"
_WHICH = {W_IN: _lib.SW_W_IN, W_REC: _lib.SW_W_REC, W_OUT: _lib.SW_W_OUT}
_KERNELS = {"fast": 0, "reference": 1}


class CoreError(RuntimeError):
    """A C status other than SW_OK; ``code`` is the numeric status."""

    def __init__(self, code: int, msg: str):
        name = _ffi.string(_lib.sw_strerror(code)).decode()
        super().__init__(f"{msg} [{name}, code {code}]")
        self.code = code


class CoreInputError(CoreError, ValueError):
    """The C core rejected an argument (channel, weight, size, parameter, events, state)."""


# The C ABI this binding was written for (csrc/spikewire.h SW_ABI_VERSION).
ABI_VERSION = 3


def _check_abi(got: int, expected: int = ABI_VERSION) -> None:
    """Refuse a compiled library built from a different csrc/spikewire.h."""
    if got != expected:
        raise ImportError(
            f"spikewire C library has ABI version {got}, this binding expects {expected}; "
            "rebuild the extension (pip install -e .)")


_check_abi(_lib.sw_abi_version())

_INPUT_CODES = {_lib.SW_E_SIZE, _lib.SW_E_PARAM, _lib.SW_E_WEIGHT, _lib.SW_E_CHANNEL,
                _lib.SW_E_EVENTS, _lib.SW_E_PRESET, _lib.SW_E_STATE, _lib.SW_E_BUFFER}


class CoreLimitError(CoreError):
    """The step counter reached its limit (the noise stream would repeat); reset the core."""


class CoreBusyError(RuntimeError):
    """The core is being stepped from another thread."""


def _check_rc(status: int, msg: str, core_ptr=None) -> None:
    if status != _lib.SW_OK:
        detail = ""
        if core_ptr is not None and status not in (_lib.SW_E_NULL, _lib.SW_E_BADCTX):
            detail = _ffi.string(_lib.sw_core_last_error(core_ptr)).decode()
        cls = (CoreLimitError if status == _lib.SW_E_LIMIT
               else CoreInputError if status in _INPUT_CODES else CoreError)
        raise cls(status, f"{msg}: {detail}" if detail else msg)


class StepOutput(NamedTuple):
    spikes: np.ndarray  # uint8 [n_hid] 0/1
    out_v: np.ndarray  # int16 [n_out] raw readout membrane
    cadc: np.ndarray  # uint8 [n_out] 8-bit CADC code


class RunOutput(NamedTuple):
    spikes: np.ndarray  # uint8 [T x n_hid]
    out_v: np.ndarray  # int16 [T x n_out]
    cadc: np.ndarray  # uint8 [T x n_out]
    hid_v: np.ndarray | None  # int16 [T x n_hid] when requested
    n_spikes: int


RUN_FIELDS = ("spikes", "hid_v", "hid_v_pre", "hid_ref", "hid_cadc", "out_v", "cadc")


class RunOutputEx(NamedTuple):
    """Every per-step observable of a block (``Core.run_ex``); None where not recorded."""
    spikes: np.ndarray | None  # uint8 [T x n_hid] 0/1
    hid_v: np.ndarray | None  # int16 [T x n_hid] membrane after the step (after reset)
    hid_v_pre: np.ndarray | None  # int16 [T x n_hid] membrane before reset (R while refractory)
    hid_ref: np.ndarray | None  # uint8 [T x n_hid] refractory counter after the step
    hid_cadc: np.ndarray | None  # uint8 [T x n_hid] CADC code of hid_v
    out_v: np.ndarray | None  # int16 [T x n_out] readout membrane
    cadc: np.ndarray | None  # uint8 [T x n_out] CADC code of out_v
    n_spikes: int


_C_TYPES = {np.uint8: "uint8_t[]", np.int16: "int16_t[]"}
# bound once for Core.step (attribute lookups are a good part of a step's Python cost)
_I32 = np.dtype(np.int32)
_I64 = np.dtype(np.int64)
_sw_core_step, _from_buffer, _NULL, _SW_OK = _lib.sw_core_step, _ffi.from_buffer, _ffi.NULL, _lib.SW_OK
_sw_core_run_ex = _lib.sw_core_run_ex
# run_ex's outputs: the sw_run_out field, the population (row length) and dtype of each RUN_FIELDS name
_RUN_C_FIELD = {"spikes": "hid_spikes", "hid_v": "hid_v", "hid_v_pre": "hid_v_pre", "hid_ref": "hid_ref",
                "hid_cadc": "hid_cadc", "out_v": "out_v", "cadc": "out_cadc"}
_RUN_POP = {name: "out" if name in ("out_v", "cadc") else "hid" for name in RUN_FIELDS}
_RUN_DTYPE = {"spikes": np.dtype(np.uint8), "hid_v": np.dtype(np.int16), "hid_v_pre": np.dtype(np.int16),
              "hid_ref": np.dtype(np.uint8), "hid_cadc": np.dtype(np.uint8), "out_v": np.dtype(np.int16),
              "cadc": np.dtype(np.uint8)}
_RUN_PLAIN = ("spikes", "out_v", "cadc")  # what Core.run returns
_RUN_HV = _RUN_PLAIN + ("hid_v",)


class Core:
    """A fixed-point LIF array (hidden recurrent spiking + leaky readout) in C.

    Parameters
    ----------
    config : CoreConfig
        Sizes, preset, time constants, weight gains (docs/fixed-point.md).
    chip : Chip, optional
        Device mismatch (a seed and spreads); ideal when omitted.
    params : (FixedPopulation, FixedPopulation), optional
        Explicit integer per-neuron parameters (hidden, readout), e.g. from a
        model file or a calibration; overrides ``config``/``chip`` mapping.
    """

    def __init__(self, config: CoreConfig, chip: Chip | None = None,
                 params: tuple[FixedPopulation, FixedPopulation] | None = None):
        if not isinstance(config, CoreConfig):
            raise TypeError(f"config must be a CoreConfig, got {type(config).__name__}")
        self.config = config
        self.chip = chip or Chip()
        hid, out = params if params is not None else fixed_params(config, self.chip)
        if hid.n != config.n_hid or out.n != config.n_out:
            raise ValueError(f"params are for {hid.n} hidden / {out.n} readout neurons, "
                             f"config has {config.n_hid} / {config.n_out}")
        self.params = (hid, out)
        self._lock = threading.Lock()
        self._ptr = None
        self._plans: dict = {}  # run_ex: record choice -> (fields, sw_run_out)

        c = _ffi.new("sw_config *")
        c.abi_version, c.struct_size = ABI_VERSION, _ffi.sizeof("sw_config")
        c.n_in, c.n_hid, c.n_out = config.n_in, config.n_hid, config.n_out
        c.preset = _lib.SW_PRESET_BSS2 if config.preset == "bss2" else _lib.SW_PRESET_UNBOUNDED
        c.shift_in, c.shift_rec, c.shift_out = config.shift_in, config.shift_rec, config.shift_out
        c.t_ref = config.t_ref_steps
        c.noise_amp, c.noise_seed = config.noise_amp, config.noise_seed
        c.cadc_base, c.cadc_shift = config.cadc_base, config.cadc_shift
        keep = []  # the cdata below must stay alive during sw_core_create

        def pop(fp: FixedPopulation):
            p = _ffi.new("sw_pop_params *")
            for name in FixedPopulation.FIELDS:
                arr = np.ascontiguousarray(getattr(fp, name), dtype=np.int32)
                keep.append(arr)
                setattr(p, name, _ffi.from_buffer("int32_t[]", arr))
            keep.append(p)
            return p

        pp = _ffi.new("sw_core **")
        st = _lib.sw_core_create(c, pop(hid), pop(out), pp)
        if st != _lib.SW_OK:
            cls = CoreInputError if st in _INPUT_CODES else CoreError
            raise cls(st, "cannot create core: " + _ffi.string(_lib.sw_create_error()).decode())
        self._ptr = pp[0]
        n_h, n_o = config.n_hid, config.n_out
        # Per-step output buffers; their cdata views are made once (they must
        # stay alive as long as the buffers are used by C).
        self._s_spk = np.zeros(n_h, np.uint8)
        self._s_ov = np.zeros(n_o, np.int16)
        self._s_cadc = np.zeros(n_o, np.uint8)
        self._c_spk = _ffi.from_buffer("uint8_t[]", self._s_spk, require_writable=True)
        self._c_ov = _ffi.from_buffer("int16_t[]", self._s_ov, require_writable=True)
        self._c_cadc = _ffi.from_buffer("uint8_t[]", self._s_cadc, require_writable=True)
        self._c_empty = _ffi.NULL
        views = []
        for a in (self._s_spk, self._s_ov, self._s_cadc):
            v = a.view()
            v.flags.writeable = False
            views.append(v)
        self._s_views = StepOutput(*views)  # what step(copy=False) returns

    # -- lifetime ---------------------------------------------------------
    def close(self) -> None:
        """Free the C context; safe to call twice."""
        with self._guard():
            if self._ptr is not None:
                _lib.sw_core_destroy(self._ptr)
                self._ptr = None

    def __enter__(self) -> "Core":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            if getattr(self, "_ptr", None) is not None:
                _lib.sw_core_destroy(self._ptr)
                self._ptr = None
        except Exception:  # interpreter shutdown
            pass

    @property
    def closed(self) -> bool:
        return self._ptr is None

    def _guard(self):
        return _Guard(self._lock)

    def _live(self):
        if self._ptr is None:
            raise CoreError(_lib.SW_E_BADCTX, "core is closed")
        return self._ptr

    # -- weights ----------------------------------------------------------
    def _wshape(self, which: str) -> tuple[int, int]:
        c = self.config
        if which not in _WHICH:
            raise ValueError(f"weight matrix must be one of {list(_WHICH)}, got {which!r}")
        return {W_IN: (c.n_in, c.n_hid), W_REC: (c.n_hid, c.n_hid), W_OUT: (c.n_hid, c.n_out)}[which]

    def set_weights(self, which: str, w: np.ndarray) -> None:
        """Set one matrix: ``"in"`` [n_in x n_hid], ``"rec"`` [n_hid x n_hid], ``"out"`` [n_hid x n_out].

        Weights are signed 6 bit: int8 values in -63..63 (others raise ValueError).
        """
        shape = self._wshape(which)
        w = np.asarray(w)
        if w.dtype != np.int8:
            if not np.issubdtype(w.dtype, np.integer):
                raise TypeError(f"weights {which!r} must be integers (int8), got dtype {w.dtype}")
        if w.shape != shape:
            raise ValueError(f"weights {which!r} must have shape {shape}, got {w.shape}")
        if w.size and (w.min() < -63 or w.max() > 63):
            bad = w[(w < -63) | (w > 63)].ravel()[0]
            raise ValueError(f"weights {which!r} must be in -63..63 (6-bit signed), found {int(bad)}")
        w8 = np.ascontiguousarray(w, dtype=np.int8)
        with self._guard():
            ptr = self._live()
            _check_rc(_lib.sw_core_set_weights(ptr, _WHICH[which], _ffi.from_buffer("int8_t[]", w8), w8.size),
                   f"cannot set weights {which!r}", ptr)

    def get_weights(self, which: str) -> np.ndarray:
        shape = self._wshape(which)
        w = np.zeros(shape, np.int8)
        with self._guard():
            ptr = self._live()
            _check_rc(_lib.sw_core_get_weights(ptr, _WHICH[which],
                                            _ffi.from_buffer("int8_t[]", w, require_writable=True), w.size),
                   f"cannot get weights {which!r}", ptr)
        return w

    # -- simulation ---------------------------------------------------------
    @property
    def kernel(self) -> str:
        return self._kernel if hasattr(self, "_kernel") else "fast"

    @kernel.setter
    def kernel(self, name: str) -> None:
        if name not in _KERNELS:
            raise ValueError(f"kernel must be one of {list(_KERNELS)}, got {name!r}")
        with self._guard():
            ptr = self._live()
            _check_rc(_lib.sw_core_set_kernel(ptr, _KERNELS[name]), "cannot set kernel", ptr)
            self._kernel = name

    def reset(self) -> None:
        """Back to rest: I = 0, V = v_leak, no refractory, step counter and noise stream at 0."""
        with self._guard():
            ptr = self._live()
            _check_rc(_lib.sw_core_reset(ptr), "cannot reset", ptr)

    def step(self, channels=(), copy: bool = True) -> StepOutput:
        """Advance one time step with the given input channel ids (repeats allowed).

        Returns the hidden spikes, readout membranes and CADC codes of the step:
        fresh copies by default; with ``copy=False`` read-only views of the
        core's own per-step buffers (no allocation), which the next ``step``
        overwrites: use them before stepping again or copy what you keep.
        """
        # the hot path of streaming: names bound once (module constants below), the native int32
        # dtype recognised by identity; anything else goes through _as_channels' checks
        if type(channels) is np.ndarray and channels.dtype is _I32 and channels.ndim == 1 \
                and channels.flags.c_contiguous:
            ch = channels
        else:
            ch = _as_channels(channels)
        n = ch.shape[0]
        if n > MAX_EVENTS_PER_STEP:
            raise ValueError(f"{n} input events in one step (max {MAX_EVENTS_PER_STEP})")
        lock = self._lock
        if not lock.acquire(False):
            raise CoreBusyError("Core is being used from another thread")
        try:
            ptr = self._ptr
            if ptr is None:
                raise CoreError(_lib.SW_E_BADCTX, "core is closed")
            st = _sw_core_step(ptr, _from_buffer("int32_t[]", ch) if n else _NULL, n,
                               self._c_spk, _NULL, self._c_ov, self._c_cadc)
            if st != _SW_OK:
                _check_rc(st, "step failed", ptr)
            if copy:
                spk, ov, cadc = self._s_views
                return StepOutput(spk.copy(), ov.copy(), cadc.copy())
            return self._s_views
        finally:
            lock.release()

    def _events(self, events, n_steps: int | None):
        """Check a block's events here (clear messages); returns (T, indptr int64, channels int32)."""
        if isinstance(events, np.ndarray):
            ev = Events.from_raster(events)
            if events.shape[1] != self.config.n_in:
                raise ValueError(f"raster has {events.shape[1]} channels, core has n_in={self.config.n_in}")
        elif isinstance(events, tuple) and len(events) == 2:
            ev = Events(*events)
        else:
            raise TypeError("events must be Events/(indptr, channels) or a dense [T x n_in] raster")
        indptr = np.asarray(ev.indptr)
        if indptr.ndim != 1 or indptr.shape[0] < 1:
            raise ValueError(f"indptr must be 1-D with T+1 >= 1 entries, got shape {indptr.shape}")
        if not np.issubdtype(indptr.dtype, np.integer):
            raise TypeError(f"indptr must be integers, got dtype {indptr.dtype}")
        indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        ch = _as_channels(ev.channels)
        T = indptr.shape[0] - 1
        if T >= 2**31:
            raise ValueError(f"too many steps in one block: {T}")
        if n_steps is not None and n_steps != T:
            raise ValueError(f"events describe {T} steps, expected {n_steps}")
        if indptr[0] != 0 or indptr[-1] != ch.shape[0]:
            raise ValueError(f"indptr must start at 0 and end at the number of events ({ch.shape[0]}), "
                             f"got {indptr[0]}..{indptr[-1]}")
        d = np.diff(indptr)
        if d.size and d.min() < 0:
            raise ValueError("indptr must be non-decreasing")
        if d.size and d.max() > MAX_EVENTS_PER_STEP:
            raise ValueError(f"{d.max()} input events in one step (max {MAX_EVENTS_PER_STEP})")
        if ch.size and (ch.min() < 0 or ch.max() >= self.config.n_in):
            bad = ch[(ch < 0) | (ch >= self.config.n_in)][0]
            raise ValueError(f"input channel id {bad} out of range 0..{self.config.n_in - 1}")
        return T, indptr, ch

    def run(self, events, record_hidden_v: bool = False, n_steps: int | None = None) -> RunOutput:
        """Run a block of steps in one C call.

        ``events``: an :class:`Events` (CSR, or any ``(indptr, channels)`` pair)
        or a dense [T x n_in] raster of event counts.  ``n_steps`` checks T.
        """
        out = self.run_ex(events, n_steps=n_steps, record=_RUN_HV if record_hidden_v else _RUN_PLAIN)
        return RunOutput(out.spikes, out.out_v, out.cadc, out.hid_v, out.n_spikes)

    def _plan(self, record) -> tuple:
        """(fields, cached sw_run_out) for one ``record`` choice: made once per choice and core.
        fields: (position in RunOutputEx, sw_run_out field, row length, dtype, cffi type)."""
        key = record if type(record) is tuple else tuple(record)
        plan = self._plans.get(key)
        if plan is None:
            want = set(key)
            unknown = want - set(RUN_FIELDS)
            if unknown:
                raise ValueError(f"unknown outputs {sorted(unknown)}; choose from {list(RUN_FIELDS)}")
            c = self.config
            fields = tuple((i, _RUN_C_FIELD[name], c.n_hid if _RUN_POP[name] == "hid" else c.n_out,
                            _RUN_DTYPE[name], _C_TYPES[_RUN_DTYPE[name].type])
                           for i, name in enumerate(RUN_FIELDS) if name in want)
            o = _ffi.new("sw_run_out *")  # fields not in the plan stay NULL
            o.struct_size = _ffi.sizeof("sw_run_out")
            if len(self._plans) >= 64:  # bounded whatever callers pass
                self._plans.clear()
            plan = self._plans[key] = (fields, o)
        return plan

    def run_ex(self, events, n_steps: int | None = None, record=RUN_FIELDS) -> RunOutputEx:
        """Run a block of steps in one C call (``sw_core_run_ex``) and return every
        per-step observable named in ``record`` (default: all of :data:`RUN_FIELDS`;
        the others are None): hidden spikes, membranes after and before reset,
        refractory counters, hidden CADC codes, readout membranes and CADC codes."""
        fields, o = self._plan(record)
        # The streaming case (an Events of the front end: int64 indptr, int32 channels, both 1-D and
        # contiguous) goes to C unchecked: sw_core_run_ex validates every event before it changes
        # any state, and a refusal is explained by the checks in _events (the same errors as
        # before). Anything else is checked and converted here first.
        trusted = False
        if type(events) is Events:
            indptr, ch = events
            if (type(indptr) is np.ndarray and type(ch) is np.ndarray and indptr.dtype is _I64
                    and ch.dtype is _I32 and indptr.ndim == 1 and ch.ndim == 1 and indptr.shape[0] >= 1
                    and indptr.flags.c_contiguous and ch.flags.c_contiguous):
                T = indptr.shape[0] - 1
                trusted = T < 2**31 and (n_steps is None or n_steps == T)
        if not trusted:
            T, indptr, ch = self._events(events, n_steps)
        arrays = [None] * 7
        bufs = []
        for i, field, n, dt, ctype in fields:
            a = arrays[i] = np.zeros((T, n), dt)
            bufs.append((field, _from_buffer(ctype, a, require_writable=True) if a.size else _NULL))
        n_ev = ch.shape[0]
        err = None
        lock = self._lock
        if not lock.acquire(False):
            raise CoreBusyError("Core is being used from another thread")
        try:
            ptr = self._ptr
            if ptr is None:
                raise CoreError(_lib.SW_E_BADCTX, "core is closed")
            o.max_steps = T
            for field, buf in bufs:
                setattr(o, field, buf)
            st = _sw_core_run_ex(ptr, T, _from_buffer("int64_t[]", indptr),
                                 _from_buffer("int32_t[]", ch) if n_ev else _NULL, n_ev, o)
            if st != _SW_OK:
                try:
                    _check_rc(st, "run failed", ptr)
                except CoreError as e:
                    err = e
            n_spikes = o.n_spikes
        finally:
            lock.release()
        if err is not None:
            if trusted and st in _INPUT_CODES:
                self._events(events, n_steps)  # raises the clear message for what C refused
            raise err
        return RunOutputEx(*arrays, n_spikes=int(n_spikes))

    # -- state ----------------------------------------------------------------
    def save_state(self) -> bytes:
        """The full state (currents, membranes, refractory counters, last spikes,
        step counter, weights) as a portable little-endian blob, version 2 with a
        CRC-32 (docs/model-format.md; :mod:`spikewire.stateblob` reads and extends it)."""
        with self._guard():
            ptr = self._live()
            size = _ffi.new("int64_t *")
            _check_rc(_lib.sw_core_state_size(ptr, size), "cannot size state", ptr)
            buf = np.zeros(int(size[0]), np.uint8)
            _check_rc(_lib.sw_core_save_state(ptr, _ffi.from_buffer("uint8_t[]", buf, require_writable=True),
                                           buf.size), "cannot save state", ptr)
        return buf.tobytes()

    def load_state(self, blob: bytes) -> None:
        """Restore a blob from :meth:`save_state` of a core with the same sizes.

        Everything is checked before anything is written: a corrupt blob (CRC), a
        version-1 blob, other sizes or an unknown required section raise
        :class:`CoreInputError` naming the problem; unknown optional sections are skipped."""
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise TypeError(f"state must be bytes, got {type(blob).__name__}")
        buf = np.frombuffer(bytes(blob), np.uint8)
        with self._guard():
            ptr = self._live()
            _check_rc(_lib.sw_core_load_state(ptr, _ffi.from_buffer("uint8_t[]", buf), buf.size),
                   "cannot load state", ptr)

    def membrane(self, population: str = "hidden") -> np.ndarray:
        return self._pop_view(population, _lib.sw_core_get_membrane)

    def current(self, population: str = "hidden") -> np.ndarray:
        return self._pop_view(population, _lib.sw_core_get_current)

    def _pop_view(self, population: str, fn) -> np.ndarray:
        pops = {"hidden": (_lib.SW_POP_HIDDEN, self.config.n_hid), "readout": (_lib.SW_POP_READOUT, self.config.n_out)}
        if population not in pops:
            raise ValueError(f"population must be 'hidden' or 'readout', got {population!r}")
        pid, n = pops[population]
        v = np.zeros(n, np.int16)
        with self._guard():
            ptr = self._live()
            _check_rc(fn(ptr, pid, _ffi.from_buffer("int16_t[]", v, require_writable=True) if n else _ffi.NULL, n)
                   if n else _lib.SW_OK, "cannot read state", ptr)
        return v

    @property
    def steps(self) -> int:
        with self._guard():
            ptr = self._live()
            s = _ffi.new("int64_t *")
            _check_rc(_lib.sw_core_steps_done(ptr, s), "cannot read step counter", ptr)
            return int(s[0])


class _Guard:
    __slots__ = ("lock",)

    def __init__(self, lock):
        self.lock = lock

    def __enter__(self):
        if not self.lock.acquire(blocking=False):
            raise CoreBusyError("Core is being used from another thread")

    def __exit__(self, *exc):
        self.lock.release()
