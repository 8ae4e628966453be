"""Streaming audio front end: PCM audio in, per-step input spike events out.

The signal chain (formulas and rationale in ``docs/frontend.md``)::

    PCM (any rate) -> int16 -> polyphase resampler L/M (integer, Q14)
        -> x/32768 -> pre-emphasis -> n_channels band-pass biquad cascades
        -> per-step power -> one-pole envelope -> log2 (dB above floor)
        -> sigma-delta encoder -> CSR events (one row per 1 ms core step)

Two kernels implement it with identical arithmetic:

* ``_CKernel``: ``csrc/frontend.c`` through the project's cffi extension
  ``spikewire._spikewire_c`` (the fast path, >200x real time);
* ``_RefKernel``: plain numpy, one sample at a time (the reference; tests
  check the two are bit-identical).

Everything that depends on float transcendental functions (filter design,
resampler prototype, constants) happens here, once, in float64 and is then
rounded to float32 / int16; the per-sample work uses only IEEE float32
``+ - * /`` and integer ops in a fixed order, so events do not depend on how
the audio is split into blocks (nor on the machine).

Public API: :class:`FrontEndConfig`, :class:`FrontEnd`, :class:`Events`,
:func:`encode`, :class:`FrontEndError`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .events import Events

__all__ = ["ALGORITHM_VERSION", "Events", "FrontEnd", "FrontEndConfig", "FrontEndError", "SampleRateError",
           "check_input_rate", "encode"]

#: Version of the signal chain. It is part of :meth:`FrontEndConfig.to_dict`
#: and therefore of the config hash: bump it whenever the events for a given
#: config could change (it invalidates spike caches and model files).
ALGORITHM_VERSION = 1

_SCALES = ("mel", "erb", "log")
_COMPRESSIONS = ("log",)
_ENCODERS = ("sigma_delta",)
_NORMALIZATIONS = ("none", "pcen")
# The per-channel normalisation keys (appended after version 1's keys). They
# are serialised only when normalize != "none", so every version-1 config
# keeps its dict and hash; from_dict accepts them missing (= defaults).
_NORM_KEYS = ("normalize", "pcen_ms", "pcen_alpha", "pcen_offset_db", "pcen_eps_db",
              "pcen_range_db")
_NORM_NONE, _NORM_PCEN = 0, 1    # SW_FE_NORM_* in csrc/spikewire.h

# Resampler design (part of ALGORITHM_VERSION, not of the config): Kaiser
# windowed sinc, passband to 0.95 * Nyquist of the lower rate, stopband from
# that Nyquist, this attenuation (the Q14 taps limit it to about -70 dB anyway).
_RS_PASS = 0.95
_RS_ATTEN_DB = 70.0
_RS_Q = 14
_MIN_INPUT_RATE = 1000
_MAX_INPUT_RATE = 384000
# Limits of csrc/spikewire.h (mirrored so the reference kernel checks the same)
_MAX_CHANNELS = 128
_MIN_CHANNELS = 16
_MAX_STAGES = 4
_MAX_SPIKES = 15
_MAX_UP = 4096
_MAX_DOWN = 65536
_MAX_TAPS = 16384
# The design (float64 prototype of n taps, a few temporaries) is bounded before any array
# exists: the common rates need at most 111133 taps (11025 -> 16000 Hz), this is ~4.7x that.
_MAX_DESIGN_TAPS = 1 << 19
_CHUNK = 16384  # input samples per C call (bounds the output buffers)


# --------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class FrontEndConfig:
    """Everything that defines how a model listens.

    Attributes (units in the name; see docs/frontend.md for formulas)
    ----------
    sample_rate : int
        Internal rate in Hz; input at any rate is resampled to it.
    step_ms : float
        Length of one core time step; ``sample_rate * step_ms / 1000`` must
        be a whole number of samples.
    n_channels : int
        Band-pass channels = input channel ids 0..n_channels-1 (16..128).
    f_min_hz, f_max_hz : float
        Centre frequencies of the first and last channel (< Nyquist).
    scale : {"mel", "erb", "log"}
        Spacing of the centre frequencies.
    filter_stages : int
        Identical band-pass biquads cascaded per channel (1..4); 2 gives a
        4th-order, roughly gammatone-like, filter.
    bandwidth : float
        -3 dB bandwidth of a channel's cascade in units of the local channel
        spacing (1.0: neighbours cross at -3 dB).
    preemphasis : float
        ``x[n] - preemphasis * x[n-1]`` before the bank (0 disables), 0..0.99.
    envelope_ms : float
        Time constant of the one-pole smoothing of per-step band power.
    compression : {"log"}
        Band level in dB relative to a full-scale sine in that band.
    floor_db, ceiling_db : float
        Level (dB) that gives no spikes / ``max_rate_hz``; linear in between
        and beyond the ceiling (up to ``max_spikes_per_step``).
    encoder : {"sigma_delta"}
        First-order sigma-delta (integrate-and-fire, subtractive reset).
    max_rate_hz : float
        Spike rate of a channel whose level is at ``ceiling_db``.
    max_spikes_per_step : int
        Cap of spikes per channel per step (repeated channel ids), 1..15.
    normalize : {"none", "pcen"}
        "pcen": per-channel automatic gain in the log domain (integer), see
        docs/frontend.md "PCEN"; the drive is the band level relative to a
        slowly smoothed level of that band instead of the absolute level.
    pcen_ms : float
        Time constant of the smoothed level (pcen only).
    pcen_alpha : float
        0..1, exponent of the smoothed power in ``E / (eps + M)^alpha``
        (1: level invariant, 0: absolute level; pcen only).
    pcen_offset_db : float
        Normalised level (dB) that gives no spikes; negative: a band at its
        running level still fires (pcen only).
    pcen_eps_db : float
        ``eps`` as a band level (dB re full-scale sine): backgrounds quieter
        than this are not amplified further (pcen only).
    pcen_range_db : float
        Normalised level above ``pcen_offset_db`` that gives ``max_rate_hz``
        (replaces ``ceiling_db - floor_db`` of the log path; pcen only).
    """

    sample_rate: int = 8000
    step_ms: float = 1.0
    n_channels: int = 64
    f_min_hz: float = 100.0
    f_max_hz: float = 3800.0
    scale: str = "mel"
    filter_stages: int = 4
    bandwidth: float = 1.0
    preemphasis: float = 0.97
    envelope_ms: float = 8.0
    compression: str = "log"
    floor_db: float = -65.0
    ceiling_db: float = -20.0
    encoder: str = "sigma_delta"
    max_rate_hz: float = 100.0
    max_spikes_per_step: int = 4
    normalize: str = "none"
    pcen_ms: float = 400.0
    pcen_alpha: float = 1.0
    pcen_offset_db: float = -3.0
    pcen_eps_db: float = -110.0
    pcen_range_db: float = 30.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type == "int":
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                    raise ValueError(f"FrontEndConfig.{f.name} must be an int, got {v!r}")
                object.__setattr__(self, f.name, int(v))
            elif f.type == "float":
                if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                    raise ValueError(f"FrontEndConfig.{f.name} must be a number, got {v!r}")
                v = float(v)
                if not math.isfinite(v):
                    raise ValueError(f"FrontEndConfig.{f.name} must be finite, got {v!r}")
                object.__setattr__(self, f.name, v)
            elif f.type == "str":
                if not isinstance(v, str):
                    raise ValueError(f"FrontEndConfig.{f.name} must be a string, got {v!r}")
        self._validate()

    def _validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"FrontEndConfig.{name} = {getattr(self, name)!r}: {why}")

        if not 1000 <= self.sample_rate <= 96000:
            raise bad("sample_rate", "must be in 1000..96000 Hz")
        if not 0.0 < self.step_ms <= 100.0:
            raise bad("step_ms", "must be in (0, 100] ms")
        spp = self.sample_rate * self.step_ms / 1000.0
        if abs(spp - round(spp)) > 1e-9 or round(spp) < 1:
            raise bad("step_ms", f"sample_rate * step_ms / 1000 = {spp!r} is not a whole number of samples")
        if not _MIN_CHANNELS <= self.n_channels <= _MAX_CHANNELS:
            raise bad("n_channels", f"must be in {_MIN_CHANNELS}..{_MAX_CHANNELS}")
        nyq = self.sample_rate / 2.0
        if not 20.0 <= self.f_min_hz < self.f_max_hz:
            raise bad("f_min_hz", f"must be >= 20 Hz and below f_max_hz = {self.f_max_hz!r}")
        if not self.f_max_hz < 0.99 * nyq:
            raise bad("f_max_hz", f"must be below 0.99 * Nyquist = {0.99 * nyq!r} Hz")
        if self.scale not in _SCALES:
            raise bad("scale", f"must be one of {_SCALES}")
        if not 1 <= self.filter_stages <= _MAX_STAGES:
            raise bad("filter_stages", f"must be in 1..{_MAX_STAGES}")
        if not 0.1 <= self.bandwidth <= 10.0:
            raise bad("bandwidth", "must be in 0.1..10 (units of channel spacing)")
        if not 0.0 <= self.preemphasis <= 0.99:
            raise bad("preemphasis", "must be in 0..0.99")
        if not self.step_ms <= self.envelope_ms <= 1000.0:
            raise bad("envelope_ms", f"must be in step_ms ({self.step_ms!r})..1000 ms")
        if self.compression not in _COMPRESSIONS:
            raise bad("compression", f"must be one of {_COMPRESSIONS}")
        if not -150.0 <= self.floor_db <= 0.0:
            raise bad("floor_db", "must be in -150..0 dB")
        if not self.floor_db + 1.0 <= self.ceiling_db <= 40.0:
            raise bad("ceiling_db", f"must be in floor_db + 1 ({self.floor_db + 1.0!r})..40 dB")
        if self.encoder not in _ENCODERS:
            raise bad("encoder", f"must be one of {_ENCODERS}")
        if not 0.0 < self.max_rate_hz <= 1000.0 / self.step_ms * _MAX_SPIKES:
            raise bad("max_rate_hz", "must be positive and reachable within max spikes per step")
        if not 1 <= self.max_spikes_per_step <= _MAX_SPIKES:
            raise bad("max_spikes_per_step", f"must be in 1..{_MAX_SPIKES}")
        if self.normalize not in _NORMALIZATIONS:
            raise bad("normalize", f"must be one of {_NORMALIZATIONS}")
        if self.normalize == "none":
            for f in dataclasses.fields(self):
                if f.name.startswith("pcen_") and getattr(self, f.name) != f.default:
                    raise bad(f.name, "applies only with normalize='pcen'")
            return
        if not self.step_ms <= self.pcen_ms <= 60000.0:
            raise bad("pcen_ms", f"must be in step_ms ({self.step_ms!r})..60000 ms")
        if not 0.0 <= self.pcen_alpha <= 1.0:
            raise bad("pcen_alpha", "must be in 0..1")
        if not -60.0 <= self.pcen_offset_db <= 60.0:
            raise bad("pcen_offset_db", "must be in -60..60 dB")
        if not -120.0 <= self.floor_db:
            raise bad("floor_db", "must be >= -120 dB with normalize='pcen' (Q56 smoother range)")
        if not -120.0 <= self.pcen_eps_db <= 0.0:
            raise bad("pcen_eps_db", "must be in -120..0 dB")
        if not 1.0 <= self.pcen_range_db <= 120.0:
            raise bad("pcen_range_db", "must be in 1..120 dB")

    # -- derived ----------------------------------------------------------
    @property
    def step_samples(self) -> int:
        """Internal samples per core time step."""
        return int(round(self.sample_rate * self.step_ms / 1000.0))

    # -- serialisation ----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: every field plus ``"algorithm_version"``."""
        d: dict[str, Any] = {"algorithm_version": ALGORITHM_VERSION}
        d.update(dataclasses.asdict(self))
        if self.normalize == "none":        # version-1 dict (and hash) unchanged
            for k in _NORM_KEYS:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FrontEndConfig":
        """Inverse of :meth:`to_dict`. Every key is required (the normalisation
        keys only with ``normalize`` other than "none"), none may be extra."""
        if not isinstance(d, dict):
            raise ValueError(f"front-end config must be a dict, got {type(d).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        expected = {"algorithm_version", *names}
        unknown = sorted(set(d) - expected)
        if unknown:
            raise ValueError(f"unknown front-end config key(s) {unknown}; known keys: {sorted(expected)}")
        missing = sorted(expected - set(d) - (set(_NORM_KEYS) if d.get("normalize", "none") == "none"
                                              else set()))
        if missing:
            raise ValueError(f"front-end config is missing key(s) {missing}")
        ver = d["algorithm_version"]
        if ver != ALGORITHM_VERSION or isinstance(ver, bool):
            raise ValueError(
                f"front-end config has algorithm_version {ver!r}; this spikewire implements "
                f"version {ALGORITHM_VERSION} (events would differ, re-encode or upgrade)")
        return cls(**{n: d[n] for n in names if n in d})

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace, ASCII): what is hashed."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                          allow_nan=False)

    def config_hash(self) -> str:
        """SHA-256 hex digest of :meth:`to_json` (keys spike caches and model files)."""
        return hashlib.sha256(self.to_json().encode("ascii")).hexdigest()


# --------------------------------------------------------------------------
# design: float64 math -> float32 / int16 tables (the only place with libm)
# --------------------------------------------------------------------------

def _scale_fwd(scale: str, f: np.ndarray) -> np.ndarray:
    if scale == "mel":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    if scale == "erb":
        return 21.4 * np.log10(1.0 + 0.00437 * f)
    return np.log(f)


def _scale_inv(scale: str, u: np.ndarray) -> np.ndarray:
    if scale == "mel":
        return 700.0 * (10.0 ** (u / 2595.0) - 1.0)
    if scale == "erb":
        return (10.0 ** (u / 21.4) - 1.0) / 0.00437
    return np.exp(u)


def _scale_slope(scale: str, f: np.ndarray) -> np.ndarray:
    """du/df of the scale at f."""
    if scale == "mel":
        return 2595.0 / (math.log(10.0) * (700.0 + f))
    if scale == "erb":
        return 21.4 * 0.00437 / (math.log(10.0) * (1.0 + 0.00437 * f))
    return 1.0 / f


def center_frequencies(config: FrontEndConfig) -> np.ndarray:
    """Centre frequency (Hz) of every channel, equally spaced on ``config.scale``."""
    u = np.linspace(_scale_fwd(config.scale, np.float64(config.f_min_hz)),
                    _scale_fwd(config.scale, np.float64(config.f_max_hz)), config.n_channels)
    f = _scale_inv(config.scale, u)
    f[0], f[-1] = config.f_min_hz, config.f_max_hz
    return f


def _design_bank(config: FrontEndConfig) -> np.ndarray:
    """Biquad coefficients, float32 [stages x 5 x channels]: b0 b1 b2 a1 a2 (a0 = 1).

    Each stage is the RBJ constant-peak-gain band-pass (0 dB at f0), all
    stages of a channel identical; per-stage Q chosen so the cascade's -3 dB
    bandwidth is ``bandwidth * spacing``.
    """
    fs = float(config.sample_rate)
    f0 = center_frequencies(config)
    du = (_scale_fwd(config.scale, np.float64(config.f_max_hz))
          - _scale_fwd(config.scale, np.float64(config.f_min_hz))) / (config.n_channels - 1)
    spacing = du / _scale_slope(config.scale, f0)
    bw = config.bandwidth * spacing
    s = config.filter_stages
    bw_stage = bw / math.sqrt(2.0 ** (1.0 / s) - 1.0)
    q = np.maximum(f0 / bw_stage, 0.5)
    w0 = 2.0 * np.pi * f0 / fs
    alpha = np.sin(w0) / (2.0 * q)
    a0 = 1.0 + alpha
    b0 = alpha / a0
    a1 = -2.0 * np.cos(w0) / a0
    a2 = (1.0 - alpha) / a0
    stage = np.stack([b0, np.zeros_like(b0), -b0, a1, a2])  # [5 x C]
    return np.ascontiguousarray(np.broadcast_to(stage, (s, 5, config.n_channels)), dtype=np.float32)


class SampleRateError(ValueError):
    """An input sample rate the front end cannot resample to the model's rate (message says why).

    Raised before anything is allocated; ``spikewire run`` exits 2 on it."""


def _resampler_size(input_rate: int, output_rate: int) -> tuple[int, int, int, int, int]:
    """``(L, M, n, K, skip)`` of the resampler design, checked against the C limits and the
    design budget from scalars alone: nothing is allocated before a rate is accepted."""
    g = math.gcd(input_rate, output_rate)
    up, down = output_rate // g, input_rate // g
    if up == 1 and down == 1:
        return 1, 1, 1, 1, 0
    hint = "use a rate with a larger common divisor, e.g. 8000, 16000, 44100, 48000"
    if up > _MAX_UP:
        raise SampleRateError(
            f"input_rate {input_rate} Hz -> {output_rate} Hz needs interpolation factor {up} "
            f"(> {_MAX_UP}); {hint}")
    if down > _MAX_DOWN:
        raise SampleRateError(
            f"input_rate {input_rate} Hz -> {output_rate} Hz needs decimation factor {down} "
            f"(> {_MAX_DOWN}); {hint}")
    fs_up = float(input_rate) * up
    nyq = min(input_rate, output_rate) / 2.0
    f_pass, f_stop = _RS_PASS * nyq, nyq
    dw = 2.0 * math.pi * (f_stop - f_pass) / fs_up
    n_req = int(math.ceil((_RS_ATTEN_DB - 7.95) / (2.285 * dw))) + 1
    skip = -(-(n_req - 1) // (2 * down))          # delay in output samples
    n = 2 * skip * down + 1                        # odd, centre at skip*down
    k = -(-n // up)
    if n > _MAX_DESIGN_TAPS:
        raise SampleRateError(
            f"input_rate {input_rate} Hz -> {output_rate} Hz needs a resampler of {n} taps "
            f"(> {_MAX_DESIGN_TAPS}); {hint}")
    if k > _MAX_TAPS or skip > _MAX_TAPS:
        raise SampleRateError(f"input_rate {input_rate} Hz needs {k} resampler taps per phase (> {_MAX_TAPS})")
    return up, down, n, k, skip


def check_input_rate(config: FrontEndConfig, input_rate: int) -> None:
    """Raise :class:`SampleRateError` (or ``TypeError``) if ``input_rate`` cannot feed ``config``.

    Cheap (scalars only); :class:`FrontEnd` does the same checks before designing anything."""
    if isinstance(input_rate, bool) or not isinstance(input_rate, (int, np.integer)):
        raise TypeError(f"input_rate must be an int (Hz), got {input_rate!r}")
    input_rate = int(input_rate)
    if not _MIN_INPUT_RATE <= input_rate <= _MAX_INPUT_RATE:
        raise SampleRateError(f"input_rate must be in {_MIN_INPUT_RATE}..{_MAX_INPUT_RATE} Hz, got {input_rate}")
    _resampler_size(input_rate, config.sample_rate)


def _design_resampler(input_rate: int, output_rate: int) -> tuple[int, int, int, int, np.ndarray]:
    """Polyphase tables for input_rate -> output_rate.

    Returns ``(L, M, K, skip, coef)`` with ``coef`` int16 [L x K] in Q14,
    taps reversed within each phase (see csrc/frontend.c, fe_push).
    """
    up, down, n, k, skip = _resampler_size(input_rate, output_rate)
    if up == 1 and down == 1:
        return 1, 1, 1, 0, np.array([[1 << _RS_Q]], dtype=np.int16)
    fs_up = float(input_rate) * up
    nyq = min(input_rate, output_rate) / 2.0
    f_pass, f_stop = _RS_PASS * nyq, nyq
    fc = 0.5 * (f_pass + f_stop)
    beta = 0.1102 * (_RS_ATTEN_DB - 8.7)
    t = np.arange(n, dtype=np.float64) - skip * down
    h = up * (2.0 * fc / fs_up) * np.sinc(2.0 * fc / fs_up * t) * np.kaiser(n, beta)
    hp = np.zeros(k * up, dtype=np.float64)
    hp[:n] = h
    phases = hp.reshape(k, up).T                   # phases[p, j] = h[p + j*up]
    coef = np.rint(phases[:, ::-1] * (1 << _RS_Q))
    if np.abs(coef).sum(axis=1).max() * 32768 + (1 << (_RS_Q - 1)) > 2**31 - 1:
        raise SampleRateError(f"resampler for {input_rate} Hz would overflow its int32 accumulator")
    return up, down, k, skip, np.ascontiguousarray(coef, dtype=np.int16)


@dataclass(frozen=True)
class _KernelParams:
    """The numbers both kernels run on (float32 / int16, exactly as C sees them)."""

    n_channels: int
    n_stages: int
    step_samples: int
    max_spikes: int
    rs_up: int
    rs_down: int
    rs_taps: int
    rs_skip: int
    rs_coef: np.ndarray      # int16 [L x K]
    sos: np.ndarray          # float32 [S x 5 x C]
    preemph: np.float32
    env_alpha: np.float32
    power_scale: np.float32
    log2_k: np.float32
    floor_power: np.float32
    log2_floor: np.float32
    drive_scale: np.float32
    tiny: np.float32
    norm: int = _NORM_NONE
    pcen_k: int = 0          # Q15
    pcen_alpha: int = 0      # Q15
    pcen_off: int = 0        # Q16 log2
    pcen_eps: int = 0        # Q56 band power
    pcen_scale: np.float32 = np.float32(0.0)


def _kernel_params(config: FrontEndConfig, input_rate: int) -> _KernelParams:
    if isinstance(input_rate, bool) or not isinstance(input_rate, (int, np.integer)):
        raise TypeError(f"input_rate must be an int (Hz), got {input_rate!r}")
    input_rate = int(input_rate)
    check_input_rate(config, input_rate)
    up, down, k, skip, coef = _design_resampler(input_rate, config.sample_rate)
    f32 = np.float32
    spp = config.step_samples
    floor_power = f32(10.0 ** (config.floor_db / 10.0))
    span_log2 = (config.ceiling_db - config.floor_db) / (10.0 * math.log10(2.0))
    spikes_per_step_at_ceiling = config.max_rate_hz * config.step_ms / 1000.0
    norm = {}
    if config.normalize == "pcen":
        db_to_q16 = 65536.0 / (10.0 * math.log10(2.0))
        norm = dict(
            norm=_NORM_PCEN,
            pcen_k=max(1, min(32768, int(round(32768.0 * (1.0 - math.exp(-config.step_ms / config.pcen_ms)))))),
            pcen_alpha=int(round(32768.0 * config.pcen_alpha)),
            pcen_off=int(round(config.pcen_offset_db * db_to_q16)),
            pcen_eps=int(round(10.0 ** (config.pcen_eps_db / 10.0) * 2.0 ** 56)),
            pcen_scale=f32(spikes_per_step_at_ceiling / (config.pcen_range_db / (10.0 * math.log10(2.0)))
                           / 65536.0),
        )
    return _KernelParams(
        n_channels=config.n_channels,
        n_stages=config.filter_stages,
        step_samples=spp,
        max_spikes=config.max_spikes_per_step,
        rs_up=up, rs_down=down, rs_taps=k, rs_skip=skip, rs_coef=coef,
        sos=_design_bank(config),
        preemph=f32(config.preemphasis),
        env_alpha=f32(1.0 - math.exp(-config.step_ms / config.envelope_ms)),
        power_scale=f32(2.0 / spp),          # full-scale sine in band -> P = 1 (0 dB)
        log2_k=f32(2.0 / math.log(2.0)),
        floor_power=floor_power,
        log2_floor=f32(math.log2(float(floor_power))),
        drive_scale=f32(spikes_per_step_at_ceiling / span_log2),
        tiny=f32(2.0 ** -60),
        **norm,
    )


# --------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------

class FrontEndError(RuntimeError):
    """A C front-end call failed; ``.code`` is the SW_E_* status."""

    def __init__(self, msg: str, code: int):
        super().__init__(msg)
        self.code = code


def _load_c():
    """The cffi module with the front end compiled in, or None."""
    try:
        from . import _spikewire_c as mod  # type: ignore[attr-defined]
    except ImportError:
        return None
    if not hasattr(mod.lib, "sw_fe_create"):
        return None
    return mod


def _log2_f32(x: np.ndarray, k: np.float32) -> np.ndarray:
    """Mirror of fe_log2 in csrc/frontend.c (same float32 ops, same order)."""
    f32 = np.float32
    u = x.astype(np.float32).view(np.uint32)
    e = ((u >> np.uint32(23)) & np.uint32(0xFF)).astype(np.int32) - np.int32(127)
    m = ((u & np.uint32(0x7FFFFF)) | np.uint32(0x3F800000)).view(np.float32)
    t = (m - f32(1.0)) / (m + f32(1.0))
    t2 = t * t
    s = np.full_like(t, f32(1.0) / f32(9.0))
    s = s * t2 + f32(1.0) / f32(7.0)
    s = s * t2 + f32(1.0) / f32(5.0)
    s = s * t2 + f32(1.0) / f32(3.0)
    s = s * t2 + f32(1.0)
    return e.astype(np.float32) + (s * t) * k


def _pcen_q56(x) -> np.ndarray:
    """Mirror of fe_pcen_q56: float32 band power -> Q56 int64 (clamped at 63, truncated)."""
    x = np.minimum(np.asarray(x, np.float32), np.float32(63.0))
    return (x * np.float32(2.0 ** 56)).astype(np.int64)


def _pcen_log2q(v: np.ndarray, k: np.float32) -> np.ndarray:
    """Mirror of fe_pcen_log2q: Q16 log2 of positive Q56 int64 values, no int->float conversion."""
    u = np.asarray(v, np.int64).astype(np.uint64)
    b = np.zeros(u.shape, np.int64)
    for sh in (32, 16, 8, 4, 2, 1):                 # index of the top bit, exactly
        t = (u >> (b + sh).astype(np.uint64)) > 0
        b = np.where(t, b + sh, b)
    down = u >> np.maximum(b - 23, 0).astype(np.uint64)
    up = u << np.maximum(23 - b, 0).astype(np.uint64)
    mant = np.where(b >= 23, down, up)
    m = ((mant & np.uint64(0x7FFFFF)).astype(np.uint32) | np.uint32(0x3F800000)).view(np.float32)
    frac = (_log2_f32(m, k) * np.float32(65536.0)).astype(np.int32).astype(np.int64)
    return (b - 56) * 65536 + frac


class _RefKernel:
    """numpy reference of csrc/frontend.c: one sample at a time, same arithmetic."""

    name = "reference"

    def __init__(self, kp: _KernelParams):
        self.kp = kp
        self.reset()

    def reset(self) -> None:
        kp = self.kp
        c, s = kp.n_channels, kp.n_stages
        self.hist = np.zeros(kp.rs_taps, dtype=np.int64)   # oldest .. newest
        self.phase = 0
        self.n_in = 0
        self.n_rs = 0
        self.n_int = 0
        self.z1 = np.zeros((s, c), np.float32)
        self.z2 = np.zeros((s, c), np.float32)
        self.pw = np.zeros(c, np.float32)
        self.env = np.zeros(c, np.float32)
        self.acc = np.zeros(c, np.float32)
        self.pm = np.full(c, _pcen_q56(np.float32(kp.floor_power)) if kp.norm == _NORM_PCEN else 0,
                          dtype=np.int64)
        self.pcen_leps = int(_pcen_log2q(np.array([kp.pcen_eps], np.int64), kp.log2_k)[0]) \
            if kp.norm == _NORM_PCEN else 0
        self.x_prev = np.float32(0.0)
        self.fill = 0

    # step counting: same formulas as csrc/frontend.c
    def _rs_outputs(self, n_in: int) -> int:
        return (n_in * self.kp.rs_up + self.kp.rs_down - 1) // self.kp.rs_down

    def block_steps(self, n: int) -> int:
        st = self.kp.step_samples
        return max(0, self._rs_outputs(self.n_in + n) - self.kp.rs_skip) // st - self.n_int // st

    def _bank_sample(self, v: int) -> None:
        kp = self.kp
        x = np.float32(v) * np.float32(1.0 / 32768.0)
        xe = x - kp.preemph * self.x_prev
        self.x_prev = x
        y = np.full(kp.n_channels, xe, dtype=np.float32)
        for s in range(kp.n_stages):
            b0, b1, b2, a1, a2 = kp.sos[s]
            yo = b0 * y + self.z1[s]
            self.z1[s] = (b1 * y - a1 * yo) + self.z2[s]
            self.z2[s] = b2 * y - a2 * yo
            y = yo
        self.pw = self.pw + y * y
        self.n_int += 1
        self.fill += 1

    def _step(self, out: list) -> None:
        kp = self.kp
        f32 = np.float32
        pstep = self.pw * kp.power_scale
        e = self.env + kp.env_alpha * (pstep - self.env)
        e[e < kp.tiny] = f32(0.0)
        self.env = e
        self.pw = np.zeros_like(self.pw)
        above = e > kp.floor_power
        drive = np.zeros_like(e)
        if kp.norm == _NORM_PCEN:
            ec = np.where(above, e, kp.floor_power).astype(np.float32)
            q = _pcen_q56(ec)
            d = q - self.pm
            m = self.pm + (d >> 15) * kp.pcen_k + (((d & 32767) * kp.pcen_k) >> 15)
            self.pm = m
            le = _pcen_log2q(q, kp.log2_k)
            ld = _pcen_log2q(m + kp.pcen_eps, kp.log2_k)
            r = le - self.pcen_leps - kp.pcen_off - ((kp.pcen_alpha * (ld - self.pcen_leps)) >> 15)
            on = above & (r > 0)
            drive[on] = r[on].astype(np.int32).astype(np.float32) * kp.pcen_scale
        elif above.any():
            drive[above] = (_log2_f32(e[above], kp.log2_k) - kp.log2_floor) * kp.drive_scale
        drive[drive < f32(0.0)] = f32(0.0)
        on = drive > f32(0.0)
        a = np.where(on, self.acc + drive, f32(0.0)).astype(np.float32)
        n = a.astype(np.int32)
        cap = n > kp.max_spikes
        n[cap] = kp.max_spikes
        a[cap] = f32(kp.max_spikes)
        a = a - n.astype(np.float32)
        self.acc = a
        for z in (self.z1, self.z2):
            z[(z < kp.tiny) & (z > -kp.tiny)] = f32(0.0)
        out.append(np.repeat(np.arange(kp.n_channels, dtype=np.int32), n))
        self.fill = 0

    def _internal(self, v: int, out: list) -> None:
        self._bank_sample(v)
        if self.fill == self.kp.step_samples:
            self._step(out)

    def _push(self, x: int, out: list, limit: int | None = None) -> None:
        kp = self.kp
        self.hist[:-1] = self.hist[1:]
        self.hist[-1] = x
        self.n_in += 1
        while self.phase < kp.rs_up:
            acc = int(np.dot(kp.rs_coef[self.phase].astype(np.int64), self.hist))
            self.n_rs += 1
            if self.n_rs > kp.rs_skip and (limit is None or self.n_int < limit):
                self._internal((acc + (1 << 13)) >> 14, out)
            self.phase += kp.rs_down
        self.phase -= kp.rs_up

    @staticmethod
    def _events(out: list) -> Events:
        indptr = np.zeros(len(out) + 1, dtype=np.int64)
        indptr[1:] = np.cumsum([len(o) for o in out])
        ch = np.concatenate(out).astype(np.int32) if out else np.zeros(0, np.int32)
        return Events(indptr, ch)

    def process(self, x: np.ndarray) -> Events:
        out: list = []
        for v in x.tolist():
            self._push(v, out)
        return self._events(out)

    def flush(self) -> Events:
        out: list = []
        target = self._rs_outputs(self.n_in)
        while self.n_int < target:
            self._push(0, out, limit=target)
        while self.fill != 0:
            self._internal(0, out)
        self.reset()
        return self._events(out)


class _CKernel:
    """csrc/frontend.c through cffi; owns one sw_fe context."""

    name = "c"

    def __init__(self, kp: _KernelParams, mod):
        self.kp = kp
        self._ffi, self._lib = mod.ffi, mod.lib
        self._names = {getattr(self._lib, n): n for n in dir(self._lib) if n.startswith("SW_E_")}
        ffi, lib = self._ffi, self._lib
        coef = np.ascontiguousarray(kp.rs_coef, dtype=np.int16)
        sos = np.ascontiguousarray(kp.sos, dtype=np.float32)
        p = ffi.new("sw_fe_params *")
        p.n_channels, p.n_stages = kp.n_channels, kp.n_stages
        p.step_samples, p.max_spikes = kp.step_samples, kp.max_spikes
        p.rs_up, p.rs_down, p.rs_taps, p.rs_skip = kp.rs_up, kp.rs_down, kp.rs_taps, kp.rs_skip
        # C copies both tables during sw_fe_create; the buffers only need to
        # live until it returns.
        p.rs_coef = ffi.cast("const int16_t *", ffi.from_buffer(coef))
        p.sos = ffi.cast("const float *", ffi.from_buffer(sos))
        for name in ("preemph", "env_alpha", "power_scale", "log2_k", "floor_power",
                     "log2_floor", "drive_scale", "tiny", "pcen_scale"):
            setattr(p, name, float(getattr(kp, name)))   # float32 value, exact in double
        for name in ("norm", "pcen_k", "pcen_alpha", "pcen_off", "pcen_eps"):
            setattr(p, name, int(getattr(kp, name)))
        pp = ffi.new("sw_fe **")
        self._check_status(lib.sw_fe_create(p, pp), "sw_fe_create")
        self._fe = ffi.gc(pp[0], lib.sw_fe_destroy)
        self._steps = ffi.new("int64_t *")
        self._n_steps = ffi.new("int64_t *")
        self._n_events = ffi.new("int64_t *")
        self._indptr = np.zeros(1, dtype=np.int64)
        self._channels = np.zeros(0, dtype=np.int32)
        self._views = None  # cffi views of the two buffers (_buffers)
        self._E_BUFFER = lib.SW_E_BUFFER

    def _check_status(self, status: int, what: str) -> None:
        if status != 0:
            name = self._names.get(status, "unknown status")
            raise FrontEndError(f"{what} failed: {name} [code {status}]", status)

    def reset(self) -> None:
        self._check_status(self._lib.sw_fe_reset(self._fe), "sw_fe_reset")

    def block_steps(self, n: int) -> int:
        self._check_status(self._lib.sw_fe_block_steps(self._fe, n, self._steps), "sw_fe_block_steps")
        return int(self._steps[0])

    def _buffers(self, steps: int):
        """Reusable output buffers with room for `steps` steps, and their cffi views (made once
        per size: process() passes them to C without asking for the block's steps first)."""
        need_ev = steps * self.kp.n_channels * self.kp.max_spikes
        grown = False
        if self._indptr.shape[0] < steps + 1:
            self._indptr = np.empty(max(steps + 1, 2 * self._indptr.shape[0]), dtype=np.int64)
            grown = True
        if self._channels.shape[0] < need_ev:
            self._channels = np.empty(max(need_ev, 2 * self._channels.shape[0]), dtype=np.int32)
            grown = True
        if grown or self._views is None:
            ffi = self._ffi
            self._views = (ffi.from_buffer("int64_t[]", self._indptr, require_writable=True),
                           self._indptr.shape[0] - 1,
                           ffi.from_buffer("int32_t[]", self._channels, require_writable=True),
                           self._channels.shape[0])
        return self._views

    def _result(self) -> Events:
        ns, ne = int(self._n_steps[0]), int(self._n_events[0])
        return Events(self._indptr[: ns + 1].copy(), self._channels[:ne].copy())

    def process(self, x: np.ndarray) -> Events:
        # caller guarantees: 1-D, int16, C-contiguous, len <= _CHUNK
        if x.dtype != np.int16 or x.ndim != 1 or not x.flags.c_contiguous:
            raise TypeError(f"internal: C kernel needs contiguous 1-D int16, got {x.dtype} {x.shape}")
        # the buffers as they are first: sw_fe_process checks their room before it changes any state
        # and refuses with SW_E_BUFFER, and only then are they sized for this block
        xp = self._ffi.from_buffer("int16_t[]", x)
        ip, max_steps, ch, max_ev = self._views or self._buffers(0)
        st = self._lib.sw_fe_process(self._fe, xp, x.shape[0], ip, max_steps, ch, max_ev,
                                     self._n_steps, self._n_events)
        if st == self._E_BUFFER:
            ip, max_steps, ch, max_ev = self._buffers(self.block_steps(x.shape[0]))
            st = self._lib.sw_fe_process(self._fe, xp, x.shape[0], ip, max_steps, ch, max_ev,
                                         self._n_steps, self._n_events)
        if st != 0:
            self._check_status(st, "sw_fe_process")
        return self._result()

    def flush(self) -> Events:
        self._check_status(self._lib.sw_fe_flush_steps(self._fe, self._steps), "sw_fe_flush_steps")
        ip, max_steps, ch, max_ev = self._buffers(int(self._steps[0]))
        self._check_status(self._lib.sw_fe_flush(self._fe, ip, max_steps, ch, max_ev,
                                          self._n_steps, self._n_events), "sw_fe_flush")
        return self._result()


# --------------------------------------------------------------------------
# public front end
# --------------------------------------------------------------------------

_FLOAT_SCALE = 32768.0


def _as_pcm16(samples: Any) -> np.ndarray:
    """Validate one block and return it as contiguous int16 (float: round(x*32768), 1.0 -> 32767)."""
    if not isinstance(samples, np.ndarray):
        raise TypeError(f"samples must be a numpy array, got {type(samples).__name__}")
    if samples.ndim != 1:
        raise ValueError(
            f"samples must be 1-D mono, got shape {samples.shape}; downmix first "
            f"(e.g. x.mean(axis=1) for float, or pick one channel)")
    if samples.dtype == np.int16:
        return np.ascontiguousarray(samples)
    if samples.dtype in (np.float32, np.float64):
        if samples.size == 0:
            return np.zeros(0, dtype=np.int16)
        finite = np.isfinite(samples)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            raise ValueError(f"samples must be finite; samples[{i}] = {float(samples[i])!r}")
        peak = float(np.max(np.abs(samples)))
        if peak > 1.0:
            i = int(np.argmax(np.abs(samples)))
            raise ValueError(f"float samples must be in [-1, 1]; samples[{i}] = {float(samples[i])!r}")
        q = np.rint(samples.astype(np.float64) * _FLOAT_SCALE)
        np.clip(q, -32768.0, 32767.0, out=q)
        return q.astype(np.int16)
    raise TypeError(f"samples must be int16 PCM or float32/float64 in [-1, 1], got dtype {samples.dtype}")


class FrontEnd:
    """Streaming front end for one audio stream.

    Parameters
    ----------
    config : FrontEndConfig
    input_rate : int
        Sample rate (Hz) of the audio given to :meth:`process`.
    kernel : {"auto", "c", "reference"}
        "auto" uses the C kernel when the extension is built (warns and falls
        back to the slow numpy reference otherwise).

    Feeding a recording in blocks of any sizes yields exactly the same events
    as one call. Step t covers internal samples [t*step, (t+1)*step), i.e.
    input time [t, t+1) * step_ms: the resampler's delay is compensated.
    """

    def __init__(self, config: FrontEndConfig, input_rate: int, kernel: str = "auto"):
        if not isinstance(config, FrontEndConfig):
            raise TypeError(f"config must be a FrontEndConfig, got {type(config).__name__}")
        if kernel not in ("auto", "c", "reference"):
            raise ValueError(f"kernel must be 'auto', 'c' or 'reference', got {kernel!r}")
        kp = _kernel_params(config, input_rate)   # validates input_rate
        self.config = config
        self.input_rate = int(input_rate)
        self._kp = kp
        mod = _load_c() if kernel != "reference" else None
        if kernel == "c" and mod is None:
            raise RuntimeError("C front end not available: build the extension (pip install -e . "
                               "or python runtime/_build.py)")
        if mod is None and kernel == "auto":
            warnings.warn("spikewire C extension not built; using the slow numpy reference front end",
                          RuntimeWarning, stacklevel=2)
        self._k = _CKernel(kp, mod) if mod is not None else _RefKernel(kp)

    @property
    def kernel(self) -> str:
        """"c" or "reference"."""
        return self._k.name

    @property
    def latency_samples(self) -> int:
        """Resampler delay (input samples, rounded up) compensated by the alignment."""
        kp = self._kp
        return -(-kp.rs_skip * kp.rs_down // kp.rs_up)

    def process(self, samples: np.ndarray) -> Events:
        """Consume one block; return the events of the steps it completed."""
        x = _as_pcm16(samples)
        if x.shape[0] <= _CHUNK:
            return self._k.process(x)
        return Events.concat([self._k.process(x[i:i + _CHUNK]) for i in range(0, x.shape[0], _CHUNK)])

    def flush(self) -> Events:
        """End the stream: emit the remaining steps, padding with silence, then reset.

        After ``flush`` the total number of steps is
        ``ceil(ceil(n_in * sample_rate / input_rate) / step_samples)``.
        """
        return self._k.flush()

    def reset(self) -> None:
        """Forget all state (start of a new stream)."""
        self._k.reset()


def encode(samples: np.ndarray, rate: int, config: FrontEndConfig | None = None,
           kernel: str = "auto") -> Events:
    """Events of a whole recording (process + flush)."""
    fe = FrontEnd(config if config is not None else FrontEndConfig(), rate, kernel=kernel)
    return Events.concat([fe.process(samples), fe.flush()])
