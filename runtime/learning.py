"""Learning on the core's integer state: configuration and the integer numpy reference.

The rules (e-prop, SuperSpike, the readout delta rule) are written down once,
in docs/learning.md; the formats of every trace are in docs/fixed-point.md
("Learning traces").  :class:`ReferenceLearner` is the executable form of that
page: plain numpy, one expression per equation, integers only.  The C kernels
(csrc/learn.c) must agree with it bit for bit.

A learner never changes the core's 6-bit weights while it steps: updates go
into per-synapse accumulators (shadow weights in Q16, or a gradient for
seeded stochastic rounding), and :meth:`ReferenceLearner.commit` turns them
into new int8 weights.  The forward pass inside one stretch is therefore the
unchanged core, which is what makes replaying a stretch reproducible.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .config import CoreConfig, FixedPopulation, decay_q15, gain_q15, splitmix64_at, to_fixed
from .reference import ReferenceCore, away_shr, floor_shr, sat16, trunc_shr

_I64 = np.int64

RULES = ("eprop", "superspike", "readout")
MATRICES = ("in", "rec", "out")
FEEDBACK = ("symmetric", "random", "uniform")
WEIGHT_MODES = ("shadow", "stochastic")
ELIGIBILITY = ("traces", "events")

SHADOW_BITS = 16                      # shadow weights / gradients are Q16 of a weight step
ACC_MAX = {"shadow": 63 << SHADOW_BITS, "stochastic": 126 << SHADOW_BITS}
PSI_BITS = 8                          # surrogate derivative: 0..256 = 0..1.0 (Q8)
RANDOM_FEEDBACK_MAX = 31              # random feedback weights are -31..31
UNIFORM_FEEDBACK = 31                 # every uniform feedback weight

EVENT_WINDOW_MAX = 512                # longest impulse response of the events form (steps)
EVENT_U_MAX = 1 << 25                 # |u| bound of the events form (> 2 ACC: the clamp is exact)

# synaptic intelligence (docs/learning.md "Consolidation"): anchor and prev are Q16 of a weight
# step like the accumulators, omega is Q24 of a weight step^2, the importance Omega is Q16
SI_ONE = 1 << 16                      # 1.0 of the importance and of the pull's strength
SI_OMEGA_SHIFT = 8                    # omega += rhu(u * d, 8): Q32 -> Q24
SI_MAX = (1 << 31) - 1                # omega saturates at +-SI_MAX, Omega at SI_MAX
THETA_MAX = {"shadow": 63 << SHADOW_BITS, "stochastic": (63 << SHADOW_BITS) + ACC_MAX["stochastic"]}
SI_KINDS = ("prev", "omega", "importance", "anchor")

# target modes of a readout unit for one step
TARGET_NONE, TARGET_HI, TARGET_LO = 0, 1, -1


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


@dataclass(frozen=True)
class LearningConfig:
    """What learns and how (docs/learning.md).  All rates are right shifts (powers of two).

    rule            "eprop" | "superspike" | "readout" (readout: only ``out`` learns)
    learn           which matrices learn, a subset of ("in", "rec", "out")
    rate_in/rec/out update = round_half_up(signal * trace / 2^rate): larger = slower (0..30)
    signal_shift    learning signals are round_half_up(. / 2^(14 + signal_shift)) (0..30)
    trace_shift     one presynaptic event adds 2^trace_shift to its trace (0..14)
    surrogate_log2  surrogate width W = 2^surrogate_log2 membrane units (8..15)
    feedback        "symmetric" (W_out^T) | "random" (seeded, -31..31) | "uniform" (all 31)
    feedback_seed   seed of the random feedback matrix
    target_hi       the label unit's readout membrane should be >= this (int16)
    target_lo       the other units' membranes should be <= this (int16)
    weights         "shadow" (Q16 shadow weights) | "stochastic" (seeded stochastic rounding)
    sr_seed         seed of stochastic rounding
    ss_tau_rise_ms / ss_tau_decay_ms   SuperSpike's own kernels (presynaptic and postsynaptic
                    traces: rise = the current-like stage, decay = the membrane-like stage)
    eligibility     "traces" (per-synapse traces every step) | "events" (the same filters as
                    impulse responses; each presynaptic event is credited once its window is
                    complete: docs/learning.md "The events form")
    si              synaptic intelligence (docs/learning.md "Consolidation"): importance is
                    accumulated at every commit and important weights are pulled toward their anchor
    si_c_log2       consolidation strength c = 2^si_c_log2 (-16..16)
    si_xi_log2      damping xi = 2^si_xi_log2 weight steps^2 (-16..8)
    """

    rule: str = "eprop"
    learn: tuple = ("in", "out")
    rate_in: int = 16
    rate_rec: int = 16
    rate_out: int = 12
    signal_shift: int = 8
    trace_shift: int = 10
    surrogate_log2: int = 12
    feedback: str = "symmetric"
    feedback_seed: int = 0
    target_hi: int = 4096
    target_lo: int = -2048
    weights: str = "shadow"
    sr_seed: int = 0
    ss_tau_rise_ms: float = 5.0
    ss_tau_decay_ms: float = 10.0
    eligibility: str = "traces"
    si: bool = False
    si_c_log2: int = 0
    si_xi_log2: int = -2

    def __post_init__(self) -> None:
        _require(self.rule in RULES, f"learning rule must be one of {RULES}, got {self.rule!r:.60}")
        learn = self.learn
        if isinstance(learn, str):
            learn = tuple(x for x in learn.replace(",", " ").split() if x)
        _require(isinstance(learn, (tuple, list)) and all(isinstance(m, str) for m in learn),
                 f"learn must be a list of matrix names {MATRICES}, got {self.learn!r:.60}")
        bad = [m for m in learn if m not in MATRICES]
        _require(not bad, f"learn names unknown matrices {bad}; choose from {MATRICES}")
        _require(len(set(learn)) == len(learn), f"learn names a matrix twice: {list(learn)}")
        learn = tuple(m for m in MATRICES if m in learn)   # canonical order
        if self.rule == "readout":
            _require(learn in ((), ("out",)), f"rule 'readout' learns only 'out', got learn={list(learn)}")
        object.__setattr__(self, "learn", learn)
        for name in ("rate_in", "rate_rec", "rate_out", "signal_shift"):
            v = getattr(self, name)
            _require(_is_int(v) and 0 <= v <= 30, f"{name} must be an integer shift 0..30, got {v!r:.60}")
        _require(_is_int(self.trace_shift) and 0 <= self.trace_shift <= 14,
                 f"trace_shift must be 0..14, got {self.trace_shift!r:.60}")
        _require(_is_int(self.surrogate_log2) and PSI_BITS <= self.surrogate_log2 <= 15,
                 f"surrogate_log2 must be {PSI_BITS}..15, got {self.surrogate_log2!r:.60}")
        _require(self.feedback in FEEDBACK, f"feedback must be one of {FEEDBACK}, got {self.feedback!r:.60}")
        for name in ("feedback_seed", "sr_seed"):
            v = getattr(self, name)
            _require(_is_int(v) and 0 <= v < 2**64, f"{name} must be an int in [0, 2^64), got {v!r:.60}")
        for name in ("target_hi", "target_lo"):
            v = getattr(self, name)
            _require(_is_int(v) and -32768 <= v <= 32767, f"{name} must be an int16 value, got {v!r:.60}")
        _require(self.target_lo < self.target_hi,
                 f"target_lo ({self.target_lo}) must be below target_hi ({self.target_hi})")
        _require(self.eligibility in ELIGIBILITY,
                 f"eligibility must be one of {ELIGIBILITY}, got {self.eligibility!r:.60}")
        _require(isinstance(self.si, bool), f"si must be true or false, got {self.si!r:.60}")
        _require(_is_int(self.si_c_log2) and -16 <= self.si_c_log2 <= 16,
                 f"si_c_log2 must be an integer -16..16, got {self.si_c_log2!r:.60}")
        _require(_is_int(self.si_xi_log2) and -16 <= self.si_xi_log2 <= 8,
                 f"si_xi_log2 must be an integer -16..8, got {self.si_xi_log2!r:.60}")
        _require(self.weights in WEIGHT_MODES, f"weights must be one of {WEIGHT_MODES}, got {self.weights!r:.60}")
        for name in ("ss_tau_rise_ms", "ss_tau_decay_ms"):
            v = getattr(self, name)
            _require(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1e6,
                     f"{name} must be a positive number of ms, got {v!r:.60}")

    @classmethod
    def rate(cls, x: float) -> int:
        """The shift of a rate given as a power of two: rate(2**-12) == 12."""
        _require(isinstance(x, (int, float)) and x > 0, f"a rate must be a positive power of two, got {x!r:.60}")
        m, e = np.frexp(x)
        _require(m == 0.5 and 1 - e >= 0, f"a rate must be a power of two 2^-k with k >= 0, got {x!r:.60}")
        return int(1 - e)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["learn"] = list(self.learn)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LearningConfig":
        if not isinstance(d, Mapping):
            raise ValueError(f"learning config must be a mapping, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        _require(not unknown, f"unknown learning config keys {unknown}")
        kw = dict(d)
        if "learn" in kw and isinstance(kw["learn"], list):
            kw["learn"] = tuple(kw["learn"])
        return cls(**kw)


@dataclass(frozen=True)
class LearnTables:
    """The integer constants a learner computes with (shared by numpy and C).

    pre_A/pre_G [n_hid]   filters of the presynaptic traces (e-prop: each neuron's own A, G)
    post_A/post_G         the filter of eligibility (e-prop: the nominal readout's A, G)
    out_A/out_G           the filter of hidden spikes for the readout rule (nominal readout)
    """

    pre_A: np.ndarray
    pre_G: np.ndarray
    post_A: int
    post_G: int
    out_A: int
    out_G: int
    g_hid: np.ndarray
    g_out: np.ndarray
    v_th: np.ndarray


def tables(config: CoreConfig, hid: FixedPopulation, out: FixedPopulation, lc: LearningConfig) -> LearnTables:
    nom = to_fixed(config.readout, 1, config.dt_ms)
    out_A, out_G = int(nom.decay_syn[0]), int(nom.gain_mem[0])
    if lc.rule == "superspike":
        a = decay_q15(lc.ss_tau_rise_ms, config.dt_ms)
        g = gain_q15(lc.ss_tau_decay_ms, config.dt_ms)
        pre_A = np.full(config.n_hid, a, _I64)
        pre_G = np.full(config.n_hid, g, _I64)
        post_A, post_G = a, g
    else:
        pre_A = hid.decay_syn.astype(_I64)
        pre_G = hid.gain_mem.astype(_I64)
        post_A, post_G = out_A, out_G
    return LearnTables(pre_A, pre_G, post_A, post_G, out_A, out_G,
                       hid.g_syn.astype(_I64), out.g_syn.astype(_I64), hid.v_th.astype(_I64))


def impulse_response(A: int, G: int, impulse: int, kmax: int = EVENT_WINDOW_MAX) -> np.ndarray:
    """V of the integer current -> membrane filter of the traces (current rounded toward zero,
    membrane away from zero) k = 0, 1, ... steps after an impulse at step 0, up to the last step
    before both stages are exactly 0 again (at most kmax steps; at least one value)."""
    i = v = 0
    out = []
    for k in range(kmax):
        t = i * A
        i = (abs(t) >> 15) * (1 if t >= 0 else -1) + (impulse if k == 0 else 0)
        t = (i - v) * G
        v = v + ((abs(t) + 32767) >> 15) * (1 if t >= 0 else -1)
        if i == 0 and v == 0:
            break
        out.append(v)
    return np.array(out or [0], _I64)


def event_tables(t: LearnTables, lc: LearningConfig) -> tuple[np.ndarray, np.ndarray]:
    """The events form's kernels: hpre [Kp x n_hid] (each neuron's presynaptic response to one
    event of 2^trace_shift, zero-padded to the longest) and h [K] (the eligibility filter's
    response to 2^15, i.e. Q15)."""
    h = impulse_response(int(t.post_A), int(t.post_G), 1 << 15)
    cache: dict = {}
    rows = []
    for a, g in zip(t.pre_A.tolist(), t.pre_G.tolist()):
        if (a, g) not in cache:
            cache[(a, g)] = impulse_response(a, g, 1 << lc.trace_shift)
        rows.append(cache[(a, g)])
    hpre = np.zeros((max(len(r) for r in rows), len(rows)), _I64)
    for j, r in enumerate(rows):
        hpre[:len(r), j] = r
    return hpre, h


def random_feedback(seed: int, n_hid: int, n_out: int) -> np.ndarray:
    """The seeded random feedback matrix B [n_hid x n_out], int8 in -31..31."""
    ctr = np.arange(n_hid * n_out, dtype=np.uint64)
    hi = splitmix64_at(seed, ctr) >> np.uint64(32)
    with np.errstate(over="ignore"):
        v = (hi * np.uint64(2 * RANDOM_FEEDBACK_MAX + 1)) >> np.uint64(32)
    return (v.astype(_I64) - RANDOM_FEEDBACK_MAX).reshape(n_hid, n_out).astype(np.int8)


def feedback_matrix(lc: LearningConfig, w_out: np.ndarray) -> np.ndarray:
    n_hid, n_out = w_out.shape
    if lc.feedback == "symmetric":
        return w_out.astype(np.int8)
    if lc.feedback == "random":
        return random_feedback(lc.feedback_seed, n_hid, n_out)
    return np.full((n_hid, n_out), UNIFORM_FEEDBACK, np.int8)


def rhu_shr(x: np.ndarray, s: int) -> np.ndarray:
    """x / 2^s rounded half up: floor((x + 2^(s-1)) / 2^s); s = 0 is x."""
    if s == 0:
        return x
    return floor_shr(x + (1 << (s - 1)), s)


def surrogate(v_pre: np.ndarray, v_th: np.ndarray, refractory: np.ndarray, log2w: int) -> np.ndarray:
    """psi = floor(max(0, W - |v - theta|) / 2^(log2w - 8)), 0..256 (Q8); 0 when refractory."""
    d = np.abs(v_pre.astype(_I64) - v_th)
    psi = np.maximum(0, (1 << log2w) - d) >> (log2w - PSI_BITS)
    return np.where(refractory, 0, psi)


def target_modes(n_out: int, label: int | None = None, reward: int | None = None,
                 decided: int | None = None) -> np.ndarray:
    """Per readout unit TARGET_HI / TARGET_LO / TARGET_NONE for a label or a reward.

    label k: unit k HI, all others LO.  reward +1 for decided unit d: the same as label d.
    reward -1: unit d LO, the others have no target (it was wrong; we do not know what was right).
    """
    m = np.zeros(n_out, np.int8)
    if label is not None and reward is not None:
        raise ValueError("give a label or a reward, not both")
    if reward is not None:
        if reward not in (1, -1):
            raise ValueError(f"reward must be +1 or -1, got {reward!r}")
        if decided is None or not (0 <= decided < n_out):
            raise ValueError(f"a reward needs the decided unit 0..{n_out - 1}, got {decided!r}")
        if reward == 1:
            label = decided
        else:
            m[decided] = TARGET_LO
            return m
    if label is not None:
        if not (_is_int(label) and 0 <= label < n_out):
            raise ValueError(f"label must be a readout unit 0..{n_out - 1}, got {label!r}")
        m[:] = TARGET_LO
        m[label] = TARGET_HI
    return m


def readout_error(y: np.ndarray, modes: np.ndarray, hi: int, lo: int) -> np.ndarray:
    """d(hinge loss)/dy per unit: HI: min(0, y - hi); LO: max(0, y - lo); NONE: 0."""
    y = y.astype(_I64)
    return np.where(modes == TARGET_HI, np.minimum(0, y - hi),
                    np.where(modes == TARGET_LO, np.maximum(0, y - lo), 0))


class ReferenceLearner:
    """The integer numpy reference of every rule (docs/learning.md, the spec the C kernels match).

    Drive it with :meth:`step` once per core step, giving what the core computed in that step:
    input counts per channel, last step's hidden spikes, this step's pre-reset membranes, the
    refractory flags (refractory at the start of the step), this step's spikes and readout
    membranes.  :func:`run_reference` does this with a :class:`ReferenceCore`.
    """

    def __init__(self, config: CoreConfig, hid: FixedPopulation, out: FixedPopulation,
                 lc: LearningConfig, weights: Mapping[str, np.ndarray]):
        self.config, self.lc = config, lc
        self.t = tables(config, hid, out, lc)
        n_in, n_hid, n_out = config.n_in, config.n_hid, config.n_out
        self.shape = {"in": (n_in, n_hid), "rec": (n_hid, n_hid), "out": (n_hid, n_out)}
        self.w = {}
        for m in MATRICES:
            w = np.asarray(weights[m])
            if w.shape != self.shape[m]:
                raise ValueError(f"weights {m!r} must have shape {self.shape[m]}, got {w.shape}")
            self.w[m] = w.astype(np.int8).copy()
        self.modes = np.zeros(n_out, np.int8)
        # traces are kept only for the hidden matrices that learn (the others would not be used)
        self.trace_matrices = tuple(m for m in ("in", "rec") if m in lc.learn)
        self.events = lc.eligibility == "events" and lc.rule != "readout"
        if self.events:
            self.hpre, self.h = event_tables(self.t, lc)
            self.window = self.hpre.shape[0] + len(self.h) - 1   # an event's steps of credit
        self.commits = 0
        self.updates = 0
        self.reset_traces()
        self.reset_accumulators()
        # synaptic intelligence: state only for the matrices that learn, only with si on
        self.si_importance = {m: np.zeros(self.shape[m], _I64) for m in lc.learn} if lc.si else {}
        self.si_start()

    def theta(self, m: str) -> np.ndarray:
        """The parameter synaptic intelligence follows, Q16: the shadow weight, or (stochastic)
        the weight plus the pending gradient."""
        if self.lc.weights == "shadow":
            return self.acc[m].copy()
        return (self.w[m].astype(_I64) << SHADOW_BITS) + self.acc[m]

    def si_start(self) -> None:
        """After new weights (create, set_weights): the path starts here (prev = acc, anchor =
        theta, omega = 0); the importance is kept."""
        ms = self.lc.learn if self.lc.si else ()
        self.si_prev = {m: self.acc[m].copy() for m in ms}
        self.si_anchor = {m: self.theta(m) for m in ms}
        self.si_omega = {m: np.zeros(self.shape[m], _I64) for m in ms}

    # -- state ------------------------------------------------------------
    def reset_traces(self) -> None:
        n_in, n_hid = self.config.n_in, self.config.n_hid
        z = lambda *s: np.zeros(s, _I64)  # noqa: E731
        self.eI = {"in": z(n_in, n_hid), "rec": z(n_hid, n_hid)}
        self.eV = {"in": z(n_in, n_hid), "rec": z(n_hid, n_hid)}
        self.FI = {"in": z(n_in, n_hid), "rec": z(n_hid, n_hid)}
        self.FV = {"in": z(n_in, n_hid), "rec": z(n_hid, n_hid)}
        self.zI = z(n_hid)
        self.zV = z(n_hid)
        # events form: the steps whose events are not credited yet (at most window - 1)
        self.pending = []    # per step: (pre counts per matrix, psi, Lq)

    def reset_accumulators(self) -> None:
        """Shadow mode: shadow = w * 2^16; stochastic mode: gradient = 0."""
        self.acc = {}
        for m in MATRICES:
            if self.lc.weights == "shadow":
                self.acc[m] = self.w[m].astype(_I64) << SHADOW_BITS
            else:
                self.acc[m] = np.zeros(self.shape[m], _I64)

    def set_target(self, modes: np.ndarray) -> None:
        modes = np.asarray(modes, np.int8)
        if modes.shape != (self.config.n_out,):
            raise ValueError(f"target modes must have shape ({self.config.n_out},), got {modes.shape}")
        self.modes = modes.copy()

    # -- one step -----------------------------------------------------------
    def step(self, counts: np.ndarray, z_prev: np.ndarray, v_pre: np.ndarray,
             refractory: np.ndarray, z: np.ndarray, y: np.ndarray) -> None:
        lc, t = self.lc, self.t
        psi = surrogate(v_pre, t.v_th, refractory, lc.surrogate_log2)
        # readout error and learning signals
        err = readout_error(y, self.modes, lc.target_hi, lc.target_lo)
        errg = rhu_shr(err * t.g_out, 14)
        B = feedback_matrix(lc, self.w["out"]).astype(_I64)
        L = B @ errg
        Lq = sat16(rhu_shr(L * t.g_hid, 14 + lc.signal_shift))
        errq = sat16(rhu_shr(errg, lc.signal_shift))
        lo, hi = -ACC_MAX[lc.weights], ACC_MAX[lc.weights]
        # hidden synapses: presynaptic trace -> eligibility -> filtered eligibility -> update
        pre = {"in": counts.astype(_I64), "rec": z_prev.astype(_I64)}
        if self.events:
            self.pending.append(({m: pre[m] for m in self.trace_matrices}, psi, Lq))
            if len(self.pending) == self.window:   # the oldest step's window is complete
                self._credit(0)
                self.pending.pop(0)
        for m in (() if self.events else self.trace_matrices):
            x = pre[m][:, None]
            eI = sat16(trunc_shr(self.eI[m] * t.pre_A, 15) + (x << lc.trace_shift))
            eV = sat16(self.eV[m] + away_shr((eI - self.eV[m]) * t.pre_G, 15))
            e = rhu_shr(eV * psi, PSI_BITS)
            FI = sat16(trunc_shr(self.FI[m] * t.post_A, 15) + e)
            FV = sat16(self.FV[m] + away_shr((FI - self.FV[m]) * t.post_G, 15))
            self.eI[m], self.eV[m], self.FI[m], self.FV[m] = eI, eV, FI, FV
            rate = lc.rate_in if m == "in" else lc.rate_rec
            self.acc[m] = np.clip(self.acc[m] - rhu_shr(Lq * FV, rate), lo, hi)
        # readout: filtered hidden spikes, delta rule
        self.zI = sat16(trunc_shr(self.zI * t.out_A, 15) + (z.astype(_I64) << lc.trace_shift))
        self.zV = sat16(self.zV + away_shr((self.zI - self.zV) * t.out_G, 15))
        if "out" in lc.learn:
            self.acc["out"] = np.clip(self.acc["out"] - rhu_shr(self.zV[:, None] * errq[None, :], lc.rate_out),
                                      lo, hi)
        self.updates += 1

    # -- the events form ---------------------------------------------------------
    def _credit(self, e: int) -> None:
        """Credit the presynaptic events of pending step e with the learning signals held
        (a step not held yet counts as psi = Lq = 0)."""
        lc, t = self.lc, self.t
        Kp, K = self.hpre.shape[0], len(self.h)
        n_hid = self.config.n_hid
        psi = np.zeros((Kp, n_hid), _I64)
        Lq = np.zeros((Kp + K - 1, n_hid), _I64)
        for k, (_, p, q) in enumerate(self.pending[e:e + Kp + K - 1]):
            if k < Kp:
                psi[k] = p
            Lq[k] = q
        lam = np.stack([self.h @ Lq[k:k + K] for k in range(Kp)])          # Lam_j(e + k')
        pq = sat16(rhu_shr(psi * lam, PSI_BITS + 15))
        D = (self.hpre * pq).sum(axis=0)
        lo, hi = -ACC_MAX[lc.weights], ACC_MAX[lc.weights]
        for m, x in self.pending[e][0].items():
            rate = lc.rate_in if m == "in" else lc.rate_rec
            u = np.clip(rhu_shr(D, rate), -EVENT_U_MAX, EVENT_U_MAX)
            self.acc[m] = np.clip(self.acc[m] - x[:, None] * u[None, :], lo, hi)

    def flush(self) -> None:
        """Events form: credit every pending step now with the learning signals so far (the
        end of a stretch: later signals will not reach them).  Traces form: nothing to do."""
        if self.events:
            for e in range(len(self.pending)):
                self._credit(e)
            self.pending = []

    # -- commit ----------------------------------------------------------------
    def commit(self) -> dict[str, np.ndarray]:
        """Turn the accumulators into new int8 weights of every learning matrix (and return them).

        shadow: w = clamp(round_half_up(shadow / 2^16), -63, 63), the shadow is kept.
        stochastic: w = clamp(w + floor(g / 2^16) + [g mod 2^16 > r], -63, 63), g = 0 after;
        r = splitmix64_at(sr_seed, commit * 2^40 + matrix * 2^36 + index) >> 48.
        """
        lc = self.lc
        for mi, m in enumerate(MATRICES):
            if m not in lc.learn:
                continue
            if lc.si:
                self._si_commit(m)
            a = self.acc[m]
            if lc.weights == "shadow":
                w = np.clip(rhu_shr(a, SHADOW_BITS), -63, 63)
            else:
                ctr = (np.uint64(self.commits) << np.uint64(40)) + (np.uint64(mi) << np.uint64(36)) \
                    + np.arange(a.size, dtype=np.uint64)
                r = (splitmix64_at(lc.sr_seed, ctr) >> np.uint64(48)).astype(_I64).reshape(a.shape)
                step = floor_shr(a, SHADOW_BITS) + ((a & 0xFFFF) > r)
                w = np.clip(self.w[m].astype(_I64) + step, -63, 63)
                self.acc[m] = np.zeros_like(a)
            self.w[m] = w.astype(np.int8)
            if lc.si:
                self.si_prev[m] = self.acc[m].copy()
        self.commits += 1
        return {m: self.w[m].copy() for m in lc.learn}

    # -- synaptic intelligence (docs/learning.md "Consolidation") ------------------------------
    def _si_commit(self, m: str) -> None:
        """Before a commit turns matrix m's accumulator into weights: the pull toward the anchor,
        then the path integral of this commit's step (one stretch = one SGD step)."""
        lc = self.lc
        imp = self.si_importance[m]
        k = imp << lc.si_c_log2 if lc.si_c_log2 >= 0 else imp >> -lc.si_c_log2
        k = np.minimum(k, SI_ONE)
        u = self.acc[m] - self.si_prev[m]
        pull = rhu_shr(k * (self.theta(m) - self.si_anchor[m]), 16)
        lim = ACC_MAX[lc.weights]
        self.acc[m] = np.clip(self.acc[m] - pull, -lim, lim)
        d = self.acc[m] - self.si_prev[m]
        self.si_omega[m] = np.clip(self.si_omega[m] + rhu_shr(u * d, SI_OMEGA_SHIFT), -SI_MAX, SI_MAX)

    def consolidate(self) -> None:
        """The end of a task: Omega += max(0, omega) / (Delta^2 + xi), omega = 0, anchor = theta,
        for every learning matrix (docs/learning.md).  In integers: Omega (Q16) +=
        floor(max(0, omega) * 2^24 / (Delta^2 + xi * 2^32)), Delta Q16 so Delta^2 is Q32, exact."""
        lc = self.lc
        if not lc.si:
            raise ValueError("consolidate needs si = true in the learning config")
        xi = 1 << (32 + lc.si_xi_log2)
        for m in lc.learn:
            th = self.theta(m)
            delta = th - self.si_anchor[m]
            den = delta * delta + xi
            add = (np.maximum(self.si_omega[m], 0) << (16 + 16 - SI_OMEGA_SHIFT)) // den
            self.si_importance[m] = np.minimum(self.si_importance[m] + add, SI_MAX)
            self.si_omega[m] = np.zeros_like(self.si_omega[m])
            self.si_anchor[m] = th


def reference_step_pre(core: ReferenceCore, channels: np.ndarray):
    """One ReferenceCore step that also returns the pre-reset membrane and the refractory flags.

    Returns (z_prev, v_pre, refractory, z, y).  The pre-reset membrane is read from a copy of the
    core stepped with unreachable thresholds (the reference keeps parameters in int64), so the
    update equations stay written once in runtime/reference.py.
    """
    z_prev = core.z.copy()
    refr = core.h_ref > 0
    probe = copy.copy(core)
    probe.hid = dict(core.hid)
    probe.hid["v_th"] = np.full_like(core.hid["v_th"], 1 << 40)
    probe.step(channels)
    v_pre = np.where(refr, core.hid["v_reset"], probe.h_V)
    z, _, y, _ = core.step(channels)
    return z_prev, v_pre, refr, z.astype(bool), y


def run_reference(core: ReferenceCore, learner: ReferenceLearner, indptr: np.ndarray,
                  channels: np.ndarray) -> dict[str, np.ndarray]:
    """Step a reference core and learner over a CSR event list; returns recorded spikes, v_pre, y."""
    T = len(indptr) - 1
    n_in = core.config.n_in
    rec = {"z": [], "v_pre": [], "refr": [], "y": []}
    for s in range(T):
        ch = np.asarray(channels[indptr[s]:indptr[s + 1]], np.int64)
        counts = np.bincount(ch, minlength=n_in)
        z_prev, v_pre, refr, z, y = reference_step_pre(core, ch)
        learner.step(counts, z_prev, v_pre, refr, z, y)
        rec["z"].append(z)
        rec["v_pre"].append(v_pre)
        rec["refr"].append(refr)
        rec["y"].append(y)
    return {k: np.array(v) for k, v in rec.items()}


class ReferenceLearningCore:
    """The numpy spec of :class:`spikewire.learncore.LearningCore`: a ReferenceCore and a
    ReferenceLearner stepped together, one :meth:`run` per stretch, with the same switches
    (learning off at first; switching on zeroes the traces and takes the previous spikes and
    refractory flags from the core; a commit at the end of each learning stretch)."""

    def __init__(self, core: ReferenceCore, hid: FixedPopulation, out: FixedPopulation, lc: LearningConfig):
        self.core = core
        self.learner = ReferenceLearner(core.config, hid, out, lc,
                                        {"in": core.w_in, "rec": core.w_rec, "out": core.w_out})
        self.learning = False

    def set_learning(self, on: bool) -> None:
        if on and not self.learning:
            self.learner.reset_traces()
        elif not on and self.learning:
            self.learner.flush()          # the end of a stretch (LearningCore.set_learning)
        self.learning = bool(on)

    def set_target(self, modes: np.ndarray) -> None:
        self.learner.set_target(modes)

    def run(self, indptr: np.ndarray, channels: np.ndarray, commit: bool = True):
        """One stretch over a CSR event list; returns the stacked StepEx of the core."""
        n_in = self.core.config.n_in
        outs = []
        for t in range(len(indptr) - 1):
            ch = np.asarray(channels[indptr[t]:indptr[t + 1]], np.int64)
            z_prev, refr = self.core.z.copy(), self.core.h_ref > 0
            o = self.core.step_ex(ch)
            if self.learning:
                self.learner.step(np.bincount(ch, minlength=n_in), z_prev, o.hid_v_pre, refr,
                                  o.spikes.astype(bool), o.out_v)
            outs.append(o)
        if self.learning and commit and outs:
            self.commit()
        return outs

    def commit(self) -> dict[str, np.ndarray]:
        new = self.learner.commit()
        for m, w in new.items():
            setattr(self.core, {"in": "w_in", "rec": "w_rec", "out": "w_out"}[m], w.copy())
        return new

    def reset(self) -> None:
        self.core.reset()
        self.learner.reset_traces()
