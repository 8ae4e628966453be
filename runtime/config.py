"""Core configuration: float-level parameters, the float-to-fixed mapping, and chips.

Everything here is data, validated once at the edge.  The mapping from
physical parameters (time constants in ms, relative gains) to the integers
the core computes with is written exactly once, in :func:`to_fixed`; see
docs/fixed-point.md for the formats and the update equations.

A *chip* (:class:`Chip`) is a seed plus relative spreads.  It draws frozen
per-neuron deviations of threshold, leak, decays and synaptic gain with an
integer-only procedure (counter-based splitmix64, Irwin-Hall normal in Q12),
so a chip seed gives the same integers on every CPU and numpy version.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

Q15_ONE = 1 << 15
Q14_ONE = 1 << 14
WEIGHT_MAX = 63

PRESETS = ("unbounded", "bss2")
BSS2_NEURONS = 512
BSS2_FANIN = 256


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@dataclass(frozen=True)
class PopulationConfig:
    """Physical parameters of one population (all neurons alike before mismatch).

    Membrane units: the threshold of the default hidden neuron is 4096, so
    int16 membranes span +-8 thresholds (docs/fixed-point.md).
    """

    tau_syn_ms: float = 5.0
    tau_mem_ms: float = 10.0
    v_th: int = 4096
    v_reset: int = 0
    v_leak: int = 0
    g_syn: float = 1.0

    def __post_init__(self) -> None:
        for name in ("tau_syn_ms", "tau_mem_ms", "g_syn"):
            v = getattr(self, name)
            _require(isinstance(v, (int, float)) and math.isfinite(v), f"{name} must be a finite number, got {v!r}")
        _require(self.tau_syn_ms > 0, f"tau_syn_ms must be > 0, got {self.tau_syn_ms}")
        _require(self.tau_mem_ms > 0, f"tau_mem_ms must be > 0, got {self.tau_mem_ms}")
        _require(0 <= self.g_syn < 2.0, f"g_syn must be in [0, 2), got {self.g_syn}")
        for name in ("v_th", "v_reset", "v_leak"):
            v = getattr(self, name)
            _require(_is_int(v) and -32768 <= v <= 32767, f"{name} must be an int16 value, got {v!r}")


@dataclass(frozen=True)
class Chip:
    """A simulated chip instance: a seed and relative spreads of device mismatch.

    Spreads are standard deviations relative to the nominal value (0 = ideal):
    ``threshold`` and ``leak`` scale with the distance v_th - v_leak, ``decay``
    scales the Q15 decay/gain factors A and G, ``gain`` the synaptic gain.
    """

    seed: int = 0
    threshold: float = 0.0
    leak: float = 0.0
    decay: float = 0.0
    gain: float = 0.0

    def __post_init__(self) -> None:
        _require(_is_int(self.seed) and 0 <= self.seed < 2**64, f"chip seed must be an int in [0, 2^64), got {self.seed!r}")
        for name in ("threshold", "leak", "decay", "gain"):
            v = getattr(self, name)
            _require(isinstance(v, (int, float)) and math.isfinite(v) and 0 <= v <= 0.5,
                   f"mismatch spread {name} must be in [0, 0.5], got {v!r}")

    @property
    def ideal(self) -> bool:
        return self.threshold == self.leak == self.decay == self.gain == 0


@dataclass(frozen=True)
class CoreConfig:
    """Shape and parameters of a core.  See docs/fixed-point.md."""

    n_in: int
    n_hid: int
    n_out: int
    preset: str = "unbounded"
    dt_ms: float = 1.0
    hidden: PopulationConfig = field(default_factory=PopulationConfig)
    readout: PopulationConfig = field(default_factory=lambda: PopulationConfig(tau_syn_ms=5.0, tau_mem_ms=10.0))
    shift_in: int = 6
    shift_rec: int = 5
    shift_out: int = 6
    t_ref_steps: int = 2
    noise_amp: int = 0
    noise_seed: int = 0
    cadc_base: int = -8192
    cadc_shift: int = 6

    def __post_init__(self) -> None:
        _require(_is_int(self.n_in) and 1 <= self.n_in <= 65536, f"n_in must be in 1..65536, got {self.n_in!r}")
        _require(_is_int(self.n_hid) and 1 <= self.n_hid <= 65536, f"n_hid must be in 1..65536, got {self.n_hid!r}")
        _require(_is_int(self.n_out) and 0 <= self.n_out <= 65536, f"n_out must be in 0..65536, got {self.n_out!r}")
        _require(self.preset in PRESETS, f"preset must be one of {PRESETS}, got {self.preset!r}")
        _require(isinstance(self.dt_ms, (int, float)) and self.dt_ms > 0 and math.isfinite(self.dt_ms),
               f"dt_ms must be > 0, got {self.dt_ms!r}")
        _require(isinstance(self.hidden, PopulationConfig), "hidden must be a PopulationConfig")
        _require(isinstance(self.readout, PopulationConfig), "readout must be a PopulationConfig")
        for name in ("shift_in", "shift_rec", "shift_out"):
            v = getattr(self, name)
            _require(_is_int(v) and 0 <= v <= 14, f"{name} must be in 0..14, got {v!r}")
        _require(_is_int(self.t_ref_steps) and 0 <= self.t_ref_steps <= 255, f"t_ref_steps must be in 0..255, got {self.t_ref_steps!r}")
        _require(_is_int(self.noise_amp) and 0 <= self.noise_amp <= 4096, f"noise_amp must be in 0..4096, got {self.noise_amp!r}")
        _require(_is_int(self.noise_seed) and 0 <= self.noise_seed < 2**64, f"noise_seed must be in [0, 2^64), got {self.noise_seed!r}")
        _require(_is_int(self.cadc_base) and -32768 <= self.cadc_base <= 32767, f"cadc_base must be an int16 value, got {self.cadc_base!r}")
        _require(_is_int(self.cadc_shift) and 0 <= self.cadc_shift <= 8, f"cadc_shift must be in 0..8, got {self.cadc_shift!r}")
        if self.preset == "bss2":
            problems = bss2_problems(self.n_in, self.n_hid, self.n_out)
            if problems:
                raise ValueError("network does not fit the bss2 preset: " + "; ".join(problems))

    # -- (de)serialisation ------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CoreConfig":
        if not isinstance(d, Mapping):
            raise ValueError(f"core config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        _require(not unknown, f"unknown core config keys: {sorted(unknown)}")
        kw = dict(d)
        for pop in ("hidden", "readout"):
            if pop in kw and isinstance(kw[pop], Mapping):
                pknown = {f.name for f in dataclasses.fields(PopulationConfig)}
                bad = set(kw[pop]) - pknown
                _require(not bad, f"unknown {pop} population keys: {sorted(bad)}")
                kw[pop] = PopulationConfig(**kw[pop])
        try:
            return cls(**kw)
        except TypeError as e:  # missing required keys
            raise ValueError(f"bad core config: {e}") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def bss2_problems(n_in: int, n_hid: int, n_out: int) -> list[str]:
    """What does not fit the BrainScaleS-2 preset (empty list: it fits)."""
    p = []
    if n_hid + n_out > BSS2_NEURONS:
        p.append(f"n_hid + n_out = {n_hid} + {n_out} = {n_hid + n_out} neurons > {BSS2_NEURONS}")
    if n_in + n_hid > BSS2_FANIN:
        p.append(f"hidden fan-in n_in + n_hid = {n_in} + {n_hid} = {n_in + n_hid} synapse rows > {BSS2_FANIN}")
    if n_hid > BSS2_FANIN:
        p.append(f"readout fan-in n_hid = {n_hid} synapse rows > {BSS2_FANIN}")
    return p


# ---------------------------------------------------------------------------
# float -> fixed (written once)

def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def decay_q15(tau_ms: float, dt_ms: float) -> int:
    """A = round(exp(-dt/tau) * 2^15): the per-step decay of the synaptic current."""
    return _round_half_up(math.exp(-dt_ms / tau_ms) * Q15_ONE)


def gain_q15(tau_ms: float, dt_ms: float) -> int:
    """G = round((1 - exp(-dt/tau)) * 2^15): the per-step membrane integration gain."""
    return _round_half_up((1.0 - math.exp(-dt_ms / tau_ms)) * Q15_ONE)


def gain_q14(g: float) -> int:
    """g_syn = round(g * 2^14), capped to 32767."""
    return min(32767, _round_half_up(g * Q14_ONE))


@dataclass(frozen=True)
class FixedPopulation:
    """The integer per-neuron parameters of one population (what C sees)."""

    decay_syn: np.ndarray  # int32 Q15 0..32768
    gain_mem: np.ndarray  # int32 Q15 0..32768
    v_leak: np.ndarray  # int32 in int16 range
    v_th: np.ndarray
    v_reset: np.ndarray
    g_syn: np.ndarray  # int32 Q14 0..32767

    FIELDS = ("decay_syn", "gain_mem", "v_leak", "v_th", "v_reset", "g_syn")
    RANGES = {
        "decay_syn": (0, Q15_ONE),
        "gain_mem": (0, Q15_ONE),
        "v_leak": (-32768, 32767),
        "v_th": (-32768, 32767),
        "v_reset": (-32768, 32767),
        "g_syn": (0, 32767),
    }

    def __post_init__(self) -> None:
        n = None
        for name in self.FIELDS:
            a = getattr(self, name)
            _require(isinstance(a, np.ndarray) and a.dtype == np.int32 and a.ndim == 1,
                   f"{name} must be a 1-D int32 array")
            n = a.shape[0] if n is None else n
            _require(a.shape[0] == n, f"{name} has {a.shape[0]} values, expected {n}")
            lo, hi = self.RANGES[name]
            if a.size and (a.min() < lo or a.max() > hi):
                raise ValueError(f"{name} must be in {lo}..{hi}, got values in {a.min()}..{a.max()}")

    @property
    def n(self) -> int:
        return int(self.decay_syn.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in self.FIELDS}


def to_fixed(pop: PopulationConfig, n: int, dt_ms: float) -> FixedPopulation:
    """Map a population's physical parameters to the core's integers (ideal chip)."""
    full = lambda v: np.full(n, v, dtype=np.int32)  # noqa: E731
    return FixedPopulation(
        decay_syn=full(decay_q15(pop.tau_syn_ms, dt_ms)),
        gain_mem=full(gain_q15(pop.tau_mem_ms, dt_ms)),
        v_leak=full(pop.v_leak),
        v_th=full(pop.v_th),
        v_reset=full(pop.v_reset),
        g_syn=full(gain_q14(pop.g_syn)),
    )


# ---------------------------------------------------------------------------
# chips: integer-only mismatch sampling

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def splitmix64_at(seed: int, ctr: np.ndarray) -> np.ndarray:
    """Counter-based splitmix64: output number ``ctr`` of the stream ``seed``.

    Same function as splitmix64_at() in csrc/core.c (uint64 arithmetic wraps).
    """
    ctr = np.asarray(ctr, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (ctr + np.uint64(1)) * _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def gauss_q12(seed: int, stream: int, n: int) -> np.ndarray:
    """n approximately standard-normal draws in Q12 (Irwin-Hall, 12 uniforms).

    Draw j is sum_{i<12} (splitmix64_at(seed, stream * 2^40 + 12 j + i) >> 52) - 24576,
    an integer in -24576..24576 with standard deviation 4096.
    """
    ctr = np.uint64(stream) * np.uint64(1 << 40) + np.arange(12 * n, dtype=np.uint64)
    u = (splitmix64_at(seed, ctr) >> np.uint64(52)).astype(np.int64).reshape(n, 12)
    return u.sum(axis=1) - 24576


def _scale_q16(values: np.ndarray, spread: float, g: np.ndarray) -> np.ndarray:
    """values * (1 + spread * g) with the factor in Q16, rounded half up."""
    s = _round_half_up(spread * 65536)
    factor = 65536 + ((s * g) >> 12)  # int64, floor
    factor = np.clip(factor, 0, 131072)
    return (values.astype(np.int64) * factor + 32768) >> 16


_STREAMS = {"threshold": 0, "leak": 1, "decay_syn": 2, "gain_mem": 3, "g_syn": 4}


def apply_chip(fixed: FixedPopulation, chip: Chip, population: int) -> FixedPopulation:
    """Per-neuron integer parameters of this population on this chip.

    ``population`` is 0 (hidden) or 1 (readout); it selects independent
    random streams.  The ideal chip returns ``fixed`` unchanged.
    """
    if chip.ideal:
        return fixed
    n = fixed.n

    def g(kind: str) -> np.ndarray:
        return gauss_q12(chip.seed, population * 8 + _STREAMS[kind], n)

    leak = fixed.v_leak.astype(np.int64)
    dist = fixed.v_th.astype(np.int64) - leak
    th = leak + _scale_q16(dist, chip.threshold, g("threshold"))
    s_leak = _round_half_up(chip.leak * 65536)
    new_leak = leak + ((((s_leak * g("leak")) >> 12) * dist + 32768) >> 16)
    A = _scale_q16(fixed.decay_syn, chip.decay, g("decay_syn"))
    G = _scale_q16(fixed.gain_mem, chip.decay, g("gain_mem"))
    gs = _scale_q16(fixed.g_syn, chip.gain, g("g_syn"))
    c16 = lambda a: np.clip(a, -32768, 32767).astype(np.int32)  # noqa: E731
    return FixedPopulation(
        decay_syn=np.clip(A, 0, Q15_ONE).astype(np.int32),
        gain_mem=np.clip(G, 0, Q15_ONE).astype(np.int32),
        v_leak=c16(new_leak),
        v_th=c16(th),
        v_reset=fixed.v_reset.copy(),
        g_syn=np.clip(gs, 0, 32767).astype(np.int32),
    )


def fixed_params(config: CoreConfig, chip: Chip | None = None) -> tuple[FixedPopulation, FixedPopulation]:
    """Hidden and readout integer parameters of ``config`` on ``chip`` (ideal if None)."""
    chip = chip or Chip()
    hid = apply_chip(to_fixed(config.hidden, config.n_hid, config.dt_ms), chip, 0)
    out = apply_chip(to_fixed(config.readout, config.n_out, config.dt_ms), chip, 1)
    return hid, out
