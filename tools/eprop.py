"""Float64 references of the learning rules and a BPTT oracle (docs/learning.md, "Checks").

- :func:`float_forward` runs the core's network in float64 torch *without* rounding or
  saturation (the surrogate model): currents and membranes as in docs/fixed-point.md with
  A, G, g as fractions.  The reset is detached (``V = v + stopgrad(V_after_reset - v)``),
  the refractory clamp too, and the spike's surrogate derivative is
  ``dz/dv = max(0, 1 - |v - theta| / W) / W`` (0 while refractory; a triangle of area 1), as in the integer rule.
- :func:`float_eprop` accumulates the e-prop (or SuperSpike / readout) gradient on-line over a
  recorded trajectory in float64, with every constant factor, so it is the gradient itself.
- :func:`bptt_gradient` differentiates the per-step hinge loss of :func:`float_forward` with
  torch autograd.

Without recurrent weights e-prop accumulated on-line equals BPTT (tests/test_eprop.py); with
recurrence it is an approximation whose cosine similarity to BPTT docs/learning.md reports.
Run ``python -m spikewire.tools.eprop`` to print those numbers.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import numpy as np
import torch

from spikewire.config import CoreConfig, FixedPopulation, to_fixed
from spikewire.learning import (TARGET_HI, TARGET_LO, LearningConfig, feedback_matrix, tables)


@dataclass
class FloatNet:
    """Float64 constants of one network (fractions of the integers the core uses)."""

    A: np.ndarray      # [n_hid] hidden current decay
    G: np.ndarray      # [n_hid] hidden membrane gain
    L: np.ndarray
    th: np.ndarray
    R: np.ndarray
    g: np.ndarray      # [n_hid] synaptic gain
    Ao: np.ndarray     # [n_out]
    Go: np.ndarray
    Lo: np.ndarray
    go: np.ndarray
    c_in: float        # 2^shift_in
    c_rec: float
    c_out: float
    t_ref: int

    @classmethod
    def from_fixed(cls, config: CoreConfig, hid: FixedPopulation, out: FixedPopulation) -> "FloatNet":
        f = lambda a, s: np.asarray(a, np.float64) / s  # noqa: E731
        return cls(f(hid.decay_syn, 2**15), f(hid.gain_mem, 2**15), f(hid.v_leak, 1), f(hid.v_th, 1),
                   f(hid.v_reset, 1), f(hid.g_syn, 2**14), f(out.decay_syn, 2**15), f(out.gain_mem, 2**15),
                   f(out.v_leak, 1), f(out.g_syn, 2**14), 2.0**config.shift_in, 2.0**config.shift_rec,
                   2.0**config.shift_out, config.t_ref_steps)


def ideal_readout(config: CoreConfig) -> FixedPopulation:
    """Readout parameters without mismatch (the eligibility filter is exact only for these)."""
    return to_fixed(config.readout, config.n_out, config.dt_ms)


class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, th, width, free):
        ctx.save_for_backward(v, th, free)
        ctx.width = width
        return ((v >= th) & (free > 0)).to(v.dtype)

    @staticmethod
    def backward(ctx, grad):
        v, th, free = ctx.saved_tensors
        psi = torch.clamp(1.0 - torch.abs(v - th) / ctx.width, min=0.0) * free / ctx.width
        return grad * psi, None, None, None


def hinge_grad(y: np.ndarray, modes: np.ndarray, hi: float, lo: float) -> np.ndarray:
    return np.where(modes == TARGET_HI, np.minimum(0.0, y - hi), np.where(modes == TARGET_LO, np.maximum(0.0, y - lo), 0.0))


def float_forward(net: FloatNet, w: dict, x: np.ndarray, lc: LearningConfig, modes: np.ndarray,
                  requires_grad: bool = False):
    """Float64 forward of the surrogate model over counts x [T x n_in].

    Returns (loss tensor, torch weights, record dict of numpy arrays: v (pre-reset), refr, z, y).
    """
    T = x.shape[0]
    tw = {m: torch.tensor(np.asarray(w[m], np.float64), requires_grad=requires_grad) for m in ("in", "rec", "out")}
    tt = lambda a: torch.tensor(np.asarray(a, np.float64))  # noqa: E731
    A, G, L, th, R, g = map(tt, (net.A, net.G, net.L, net.th, net.R, net.g))
    Ao, Go, Lo, go = map(tt, (net.Ao, net.Go, net.Lo, net.go))
    n_hid, n_out = net.A.shape[0], net.Ao.shape[0]
    width = float(1 << lc.surrogate_log2)
    I = torch.zeros(n_hid, dtype=torch.float64)
    V = L.clone()
    Io = torch.zeros(n_out, dtype=torch.float64)
    Vo = Lo.clone()
    z = torch.zeros(n_hid, dtype=torch.float64)
    ref = np.zeros(n_hid, np.int64)
    xs = torch.tensor(np.asarray(x, np.float64))
    rec = {"v": [], "refr": [], "z": [], "y": []}
    loss = torch.zeros((), dtype=torch.float64)
    mt = torch.tensor(np.asarray(modes))
    for t in range(T):
        I = A * I + g * (net.c_in * (xs[t] @ tw["in"]) + net.c_rec * (z @ tw["rec"]))
        v = V + G * (L + I - V)
        refr = ref > 0
        free = torch.tensor((~refr).astype(np.float64))
        z = _Spike.apply(v, th, width, free)
        zb = z.detach().numpy() > 0
        after = torch.where(torch.tensor(refr | zb), R, v.detach())
        V = v + (after - v).detach()
        ref = np.where(refr, ref - 1, np.where(zb, net.t_ref, 0))
        Io = Ao * Io + go * net.c_out * (z @ tw["out"])
        y = Vo + Go * (Lo + Io - Vo)
        Vo = y
        hi = torch.clamp(y - lc.target_hi, max=0.0)
        lo = torch.clamp(y - lc.target_lo, min=0.0)
        loss = loss + 0.5 * torch.sum(torch.where(mt == TARGET_HI, hi**2, torch.where(mt == TARGET_LO, lo**2, 0.0 * y)))
        rec["v"].append(v.detach().numpy().copy())
        rec["refr"].append(refr)
        rec["z"].append(zb)
        rec["y"].append(y.detach().numpy().copy())
    return loss, tw, {k: np.array(v) for k, v in rec.items()}


def bptt_gradient(net: FloatNet, w: dict, x: np.ndarray, lc: LearningConfig, modes: np.ndarray) -> dict:
    """d(loss)/dW of the float surrogate model by torch autograd (BPTT)."""
    loss, tw, rec = float_forward(net, w, x, lc, modes, requires_grad=True)
    loss.backward()
    return {m: tw[m].grad.numpy().copy() for m in ("in", "rec", "out")}, rec


def float_eprop(net: FloatNet, w: dict, x: np.ndarray, rec: dict, lc: LearningConfig, modes: np.ndarray,
                hid_int: FixedPopulation | None = None, config: CoreConfig | None = None) -> dict:
    """The rule's gradient accumulated on-line (float64, no rounding) over a recorded trajectory.

    ``rec`` holds v (pre-reset), refr, z, y per step (from :func:`float_forward` or the integer
    core).  e-prop: presynaptic traces through each hidden neuron's own filters (A_j, G_j),
    eligibility = trace x psi, filtered with the readout's filters; learning signal = feedback
    (symmetric: W_out, with the readout's gain) x hinge error.  SuperSpike uses its own kernels
    (from ``config`` and ``lc``).  Returns dL/dW estimates for in, rec, out.
    """
    T = x.shape[0]
    n_in, n_hid = np.asarray(w["in"]).shape
    if lc.rule == "superspike":
        assert hid_int is not None and config is not None
        tb = tables(config, hid_int, ideal_readout(config), lc)
        pA = tb.pre_A / 2**15
        pG = tb.pre_G / 2**15
        qA, qG = tb.post_A / 2**15, tb.post_G / 2**15
    else:
        pA, pG = net.A, net.G
        qA, qG = float(net.Ao[0]), float(net.Go[0])
    oA, oG = float(net.Ao[0]), float(net.Go[0])
    width = float(1 << lc.surrogate_log2)
    if lc.feedback == "symmetric":
        B = np.asarray(w["out"], np.float64) * net.c_out
    else:
        B = feedback_matrix(lc, np.asarray(w["out"], np.int8)).astype(np.float64) * net.c_out
    eI = {"in": np.zeros((n_in, n_hid)), "rec": np.zeros((n_hid, n_hid))}
    eV = {k: np.zeros_like(v) for k, v in eI.items()}
    FI = {k: np.zeros_like(v) for k, v in eI.items()}
    FV = {k: np.zeros_like(v) for k, v in eI.items()}
    zI = np.zeros(n_hid)
    zV = np.zeros(n_hid)
    grad = {"in": np.zeros((n_in, n_hid)), "rec": np.zeros((n_hid, n_hid)), "out": np.zeros_like(B)}
    z_prev = np.zeros(n_hid)
    cm = {"in": net.c_in, "rec": net.c_rec}
    for t in range(T):
        psi = np.clip(1.0 - np.abs(rec["v"][t] - net.th) / width, 0.0, None) * (~rec["refr"][t]) / width
        err = hinge_grad(rec["y"][t], modes, lc.target_hi, lc.target_lo)
        errg = err * net.go
        Lsig = (B @ errg) * net.g
        pre = {"in": np.asarray(x[t], np.float64), "rec": z_prev}
        for m in ("in", "rec"):
            eI[m] = pA * eI[m] + pre[m][:, None]
            eV[m] = eV[m] + pG * (eI[m] - eV[m])
            e = eV[m] * psi
            FI[m] = qA * FI[m] + e
            FV[m] = FV[m] + qG * (FI[m] - FV[m])
            grad[m] += cm[m] * Lsig[None, :] * FV[m]
        z = rec["z"][t].astype(np.float64)
        zI = oA * zI + z
        zV = zV + oG * (zI - zV)
        grad["out"] += net.c_out * zV[:, None] * errg[None, :]
        z_prev = z
    return grad


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a), np.ravel(b)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else float("nan")


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.ravel(a) - np.ravel(b)) / max(np.linalg.norm(np.ravel(b)), 1e-300))


def random_problem(seed: int, n_in: int = 12, n_hid: int = 10, n_out: int = 3, T: int = 120,
                   recurrent: bool = False, rate: float = 0.08, chip=None, rec_max: int = 24):
    """A random network and input (seeded) for the gradient checks; weights drive some spikes."""
    from spikewire.config import Chip, fixed_params
    rng = np.random.default_rng([seed, 10])
    config = CoreConfig(n_in=n_in, n_hid=n_hid, n_out=n_out, shift_in=7, shift_rec=6, shift_out=6)
    chip = chip if chip is not None else Chip(seed=seed, threshold=0.05, decay=0.05, gain=0.05)
    hid, _ = fixed_params(config, chip)
    out = ideal_readout(config)
    w = {"in": rng.integers(-20, 60, (n_in, n_hid)).astype(np.int8),
         "rec": (rng.integers(-rec_max, rec_max + 1, (n_hid, n_hid)) * recurrent).astype(np.int8),
         "out": rng.integers(-63, 64, (n_hid, n_out)).astype(np.int8)}
    x = (rng.random((T, n_in)) < rate).astype(np.int64) * rng.integers(1, 3, (T, n_in))
    label = int(rng.integers(0, n_out))
    return config, hid, out, w, x, label


def recurrent_cosines(n_samples: int, seed: int = 0, T: int = 150, rec_max: int = 24) -> list[float]:
    """Cosine similarity between e-prop and BPTT (W_in gradient) on networks with recurrence."""
    from spikewire.learning import target_modes
    lc = LearningConfig(learn=("in", "rec", "out"))
    out = []
    for s in range(n_samples):
        config, hid, outp, w, x, label = random_problem(seed * 100003 + s, recurrent=True, T=T, rec_max=rec_max)
        net = FloatNet.from_fixed(config, hid, outp)
        modes = target_modes(config.n_out, label=label)
        g_b, rec = bptt_gradient(net, w, x, lc, modes)
        g_e = float_eprop(net, w, x, rec, lc, modes)
        c = cosine(np.concatenate([g_e["in"].ravel(), g_e["rec"].ravel()]),
                   np.concatenate([g_b["in"].ravel(), g_b["rec"].ravel()]))
        if np.isfinite(c):
            out.append(c)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m spikewire.tools.eprop",
                                 description="e-prop vs BPTT: relative error without recurrence, "
                                             "cosine similarity with recurrence")
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    from spikewire.learning import target_modes
    lc = LearningConfig(learn=("in", "out"))
    errs = []
    for s in range(a.samples):
        config, hid, outp, w, x, label = random_problem(a.seed * 100003 + s, recurrent=False)
        net = FloatNet.from_fixed(config, hid, outp)
        modes = target_modes(config.n_out, label=label)
        g_b, rec = bptt_gradient(net, w, x, lc, modes)
        g_e = float_eprop(net, w, x, rec, lc, modes)
        if np.linalg.norm(g_b["in"]) > 0:
            errs.append(max(rel_err(g_e["in"], g_b["in"]), rel_err(g_e["out"], g_b["out"])))
    res = {"samples": a.samples, "norec_max_rel_err": max(errs) if errs else None, "norec_n": len(errs)}
    for r in (4, 8, 16):
        cos = recurrent_cosines(a.samples, a.seed, rec_max=r)
        res[f"rec{r}_cosine"] = {"mean": float(np.mean(cos)), "median": float(np.median(cos)),
                                 "min": float(np.min(cos)), "n": len(cos)}
    print(json.dumps(res) if a.json else "\n".join(f"{k}: {v}" for k, v in res.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
