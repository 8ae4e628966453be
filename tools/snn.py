"""Torch model of the core's network for offline surrogate-gradient training.

The network is the one of docs/fixed-point.md: a recurrent LIF hidden layer
(input and recurrent 6-bit weights, refractoriness) and a leaky non-spiking
readout driven by the hidden spikes of the same step.

Two modes
---------
``fixed`` (the one that ships): the forward pass *is* the core's integer
arithmetic, evaluated in float64 tensors that only ever hold integers
(every product is below 2^53, most below 2^31, so float64 is exact).  The
same ``trunc_shr`` / ``away_shr`` / ``sat16`` as the C core and
``runtime.reference`` are applied, per-neuron integer parameters come from
``spikewire.config.fixed_params``/``apply_chip``, and the weights are the
float parameters rounded half-up and clamped to -63..63.  Tests check that
spikes and readout membranes equal ``ReferenceCore``/``Core`` bit for bit.

Gradients: every rounding, saturation and the weight quantisation are
straight-through (the backward pass sees the linear update
``I*A/2^15 + tot*g/2^14``, ``V + (L + I - V)*G/2^15``); the spike
nonlinearity has a surrogate derivative (SuperSpike fast sigmoid by
default, or a triangle / sigmoid) of the normalised membrane
``u = (V - theta) / (theta_nom - L_nom)``.  The reset is not differentiated
(the standard "detached reset").

``float``: the same equations without rounding, saturation or weight
quantisation (any float dtype), for quick experiments / pretraining.

Weights are kept in *integer units* (1.0 = one step of the 6-bit grid), so
``int_weights()`` is what goes into a model file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from spikewire.config import Chip, CoreConfig, FixedPopulation, WEIGHT_MAX, apply_chip, fixed_params
from spikewire.reference import noise as _ref_noise

__all__ = ["SNN", "SNNOutput", "SURROGATES", "quantize_weights", "rate_regularizer", "readout_scores",
           "spike_fn", "round_half_up"]

SURROGATES = ("superspike", "triangle", "sigmoid")


# ---------------------------------------------------------------------------
# exact integer helpers on int-valued float tensors (docs/fixed-point.md)

def _trunc_shr(x: torch.Tensor, s: int) -> torch.Tensor:
    return torch.trunc(x * (1.0 / (1 << s)))


def _away_shr(x: torch.Tensor, s: int) -> torch.Tensor:
    return torch.sign(x) * torch.ceil(torch.abs(x) * (1.0 / (1 << s)))


def _sat16(x: torch.Tensor) -> torch.Tensor:
    return torch.clamp(x, -32768.0, 32767.0)


def _ste(lin: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """Forward: ``exact``; backward: the gradient of ``lin`` (straight-through)."""
    return lin + (exact - lin).detach()


def round_half_up(w: torch.Tensor) -> torch.Tensor:
    return torch.floor(w + 0.5)


def quantize_weights(w: torch.Tensor) -> torch.Tensor:
    """clamp(round_half_up(w), -63, 63) forward, identity backward."""
    return _ste(w, torch.clamp(round_half_up(w.detach()), -WEIGHT_MAX, WEIGHT_MAX))


# ---------------------------------------------------------------------------
# surrogate spike function

class _Spike(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, kind: str, beta: float):  # noqa: D401
        ctx.save_for_backward(u)
        ctx.kind, ctx.beta = kind, beta
        return (u >= 0).to(u.dtype)

    @staticmethod
    def backward(ctx, g):
        (u,) = ctx.saved_tensors
        b = ctx.beta
        if ctx.kind == "superspike":  # Zenke & Ganguli 2018: 1 / (1 + b|u|)^2
            d = 1.0 / (1.0 + b * u.abs()) ** 2
        elif ctx.kind == "triangle":  # max(0, 1 - b|u|)
            d = torch.clamp(1.0 - b * u.abs(), min=0.0)
        else:  # sigmoid'(b u), scaled to peak 1
            s = torch.sigmoid(b * u)
            d = 4.0 * s * (1.0 - s)
        return g * d, None, None


def spike_fn(u: torch.Tensor, kind: str = "superspike", beta: float = 5.0) -> torch.Tensor:
    """Heaviside(u >= 0) with a surrogate derivative."""
    if kind not in SURROGATES:
        raise ValueError(f"surrogate must be one of {SURROGATES}, got {kind!r}")
    return _Spike.apply(u, kind, float(beta))


# ---------------------------------------------------------------------------

@dataclass
class SNNOutput:
    out_v: torch.Tensor  # [B, T, n_out] readout membrane (membrane units)
    spikes: torch.Tensor  # [B, T, n_hid] 0/1
    hid_v: Optional[torch.Tensor] = None  # [B, T, n_hid] when requested


def _pop_tensors(p: FixedPopulation, dtype, device) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v.astype(np.float64), dtype=dtype, device=device) for k, v in p.arrays().items()}


class SNN(nn.Module):
    """Recurrent LIF + leaky readout, with the core's arithmetic (``mode="fixed"``) or in float.

    Parameters
    ----------
    config : CoreConfig
        Sizes, time constants, shifts, refractory time, noise (all as on the core).
    mode : "fixed" | "float"
    surrogate, beta : the spike nonlinearity's surrogate derivative.
    no_autapses : zero the diagonal of W_rec (kept zero on export).
    init_scale : (in, rec, out) standard deviations of the initial weights, integer units.
    seed : initialisation seed.
    """

    def __init__(self, config: CoreConfig, mode: str = "fixed", surrogate: str = "superspike",
                 beta: float = 5.0, no_autapses: bool = True, init_scale=(12.0, 4.0, 6.0),
                 init_mean_in: float = 2.0, seed: int = 0, dtype=None, engine: str = "bptt"):
        super().__init__()
        if engine not in ("bptt", "autograd"):
            raise ValueError(f"engine must be 'bptt' or 'autograd', got {engine!r}")
        self.engine = engine
        if mode not in ("fixed", "float"):
            raise ValueError(f"mode must be 'fixed' or 'float', got {mode!r}")
        if surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
        self.config = config
        self.mode = mode
        self.surrogate = surrogate
        self.beta = float(beta)
        self.no_autapses = no_autapses
        self.dtype = dtype or (torch.float64 if mode == "fixed" else torch.float32)
        if mode == "fixed" and self.dtype != torch.float64:
            raise ValueError("fixed mode needs float64 (exact integers)")
        g = torch.Generator().manual_seed(int(seed))
        c = config
        s_in, s_rec, s_out = init_scale
        w_in = torch.randn(c.n_in, c.n_hid, generator=g, dtype=torch.float64) * s_in + init_mean_in
        w_rec = torch.randn(c.n_hid, c.n_hid, generator=g, dtype=torch.float64) * s_rec
        w_out = torch.randn(c.n_hid, c.n_out, generator=g, dtype=torch.float64) * s_out
        # parameters are float64 (integer units); the forward pass computes in ``self.dtype``
        self.w_in = nn.Parameter(w_in)
        self.w_rec = nn.Parameter(w_rec)
        self.w_out = nn.Parameter(w_out)
        self.register_buffer("rec_mask", (1.0 - torch.eye(c.n_hid, dtype=torch.float64)) if no_autapses
                             else torch.ones(c.n_hid, c.n_hid, dtype=torch.float64))
        # per-neuron integer parameters used when forward() gets none (None: the config's ideal chip)
        self.params: tuple[FixedPopulation, FixedPopulation] | None = None
        self.clamp_weights_()

    # -- weights ---------------------------------------------------------------
    @torch.no_grad()
    def clamp_weights_(self) -> None:
        """Keep the float weights inside the representable range (call after optimiser steps)."""
        lim = WEIGHT_MAX + 0.49
        for w in (self.w_in, self.w_rec, self.w_out):
            w.clamp_(-lim, lim)
        self.w_rec.mul_(self.rec_mask)

    def set_mode(self, mode: str) -> None:
        """Switch between ``fixed`` (float64, exact) and ``float`` (float32) forward passes."""
        if mode not in ("fixed", "float"):
            raise ValueError(f"mode must be 'fixed' or 'float', got {mode!r}")
        self.mode = mode
        self.dtype = torch.float64 if mode == "fixed" else torch.float32

    def effective_weights(self):
        w_rec = self.w_rec * self.rec_mask
        if self.mode == "fixed":
            if self.dtype != torch.float64:
                raise ValueError("fixed mode needs float64 (exact integers)")
            return quantize_weights(self.w_in), quantize_weights(w_rec), quantize_weights(self.w_out)
        return self.w_in.to(self.dtype), w_rec.to(self.dtype), self.w_out.to(self.dtype)

    @torch.no_grad()
    def int_weights(self) -> dict[str, np.ndarray]:
        """The int8 weights a core runs (what the fixed forward pass uses)."""
        def q(w):
            return torch.clamp(round_half_up(w.detach().double()), -WEIGHT_MAX, WEIGHT_MAX).cpu().numpy().astype(np.int8)
        return {"in": q(self.w_in), "rec": q(self.w_rec * self.rec_mask), "out": q(self.w_out)}

    # -- parameters of the neurons --------------------------------------------
    def neuron_params(self, chip: Chip | None = None,
                      params: tuple[FixedPopulation, FixedPopulation] | None = None):
        """Integer per-neuron params as tensors: the ideal chip, a mismatch chip, or explicit ones
        (``params``, else ``self.params`` when set; a chip then deviates from those)."""
        params = params if params is not None else self.params
        if params is None:
            params = fixed_params(self.config, chip)
        elif chip is not None:
            params = (apply_chip(params[0], chip, 0), apply_chip(params[1], chip, 1))
        dev = self.w_in.device
        return _pop_tensors(params[0], self.dtype, dev), _pop_tensors(params[1], self.dtype, dev)

    # -- forward -------------------------------------------------------------------
    def forward(self, x: torch.Tensor, chip: Chip | None = None,
                params: tuple[FixedPopulation, FixedPopulation] | None = None,
                record_hidden_v: bool = False) -> SNNOutput:
        """Run the network from rest on input counts ``x`` [B, T, n_in] (events per channel and step)."""
        if self.engine == "bptt" and not record_hidden_v:
            return self._forward_bptt(x, chip, params)
        c = self.config
        fixed = self.mode == "fixed"
        x = x.to(self.dtype)
        B, T, _ = x.shape
        hp, op = self.neuron_params(chip, params)
        w_in, w_rec, w_out = self.effective_weights()
        dev, dt = x.device, self.dtype

        # Hidden per-neuron constants (broadcast over the batch)
        hA, hG, hL, hth, hR, hg = (hp[k] for k in FixedPopulation.FIELDS)
        oA, oG, oL, _, _, og = (op[k] for k in FixedPopulation.FIELDS)
        hA15, hG15, hg14 = hA / 32768.0, hG / 32768.0, hg / 16384.0
        oA15, oG15, og14 = oA / 32768.0, oG / 32768.0, og / 16384.0
        ideal_h_gain = bool(torch.all(hg == 16384))
        d_nom = float(c.hidden.v_th - c.hidden.v_leak) or 1.0
        th_n = hth / d_nom
        # input currents of all steps at once (linear in the events): [B, T, n_hid]
        tot_in = torch.matmul(x, w_in) * float(1 << c.shift_in)
        s_rec = float(1 << c.shift_rec)
        s_out = float(1 << c.shift_out)
        noise = _noise(c, T, dt, dev)

        hI = torch.zeros(B, c.n_hid, dtype=dt, device=dev)
        hV = hL.expand(B, c.n_hid).clone()
        ref = torch.zeros(B, c.n_hid, dtype=dt, device=dev)
        z = torch.zeros(B, c.n_hid, dtype=dt, device=dev)
        oI = torch.zeros(B, c.n_out, dtype=dt, device=dev)
        oV = oL.expand(B, c.n_out).clone()
        t_ref = float(c.t_ref_steps)
        outs, spks, hvs = [], [], []
        # unbind (not tot_in[:, t]): its backward stacks once instead of T full-size zero tensors
        for t, tot_in_t in enumerate(tot_in.unbind(1)):
            # hidden: synaptic input
            tot = tot_in_t + torch.matmul(z, w_rec) * s_rec
            if fixed:
                if ideal_h_gain:
                    inp = tot  # trunc_shr(tot * 16384, 14) == tot exactly
                else:
                    inp_lin = tot * hg14
                    inp = _ste(inp_lin, _trunc_shr(tot.detach() * hg, 14))
                i_lin = hI * hA15 + inp
                with torch.no_grad():
                    i_ex = _sat16(_trunc_shr(hI * hA, 15) + inp)
                hI = _ste(i_lin, i_ex)
                v_lin = hV + (hL + hI - hV) * hG15
                with torch.no_grad():
                    e = _sat16(hL + hI - hV)
                    v_ex = hV + _away_shr(e * hG, 15)
                    if noise is not None:
                        v_ex = v_ex + noise[t]
                    v_ex = _sat16(v_ex)
                if noise is not None:
                    v_lin = v_lin + noise[t]
                vn = _ste(v_lin, v_ex)
            else:
                hI = hI * hA15 + tot * hg14
                vn = hV + (hL + hI - hV) * hG15
                if noise is not None:
                    vn = vn + noise[t]
            refr = ref > 0
            free = (~refr).to(dt)
            z = spike_fn(vn / d_nom - th_n, self.surrogate, self.beta) * free
            with torch.no_grad():
                zb = z > 0
                reset = refr | zb
                ref = torch.where(refr, ref - 1.0, torch.where(zb, torch.full_like(ref, t_ref), torch.zeros_like(ref)))
            hV = torch.where(reset, hR.expand_as(vn), vn)
            # readout: same-step spikes
            acc = torch.matmul(z, w_out) * s_out
            if fixed:
                with torch.no_grad():
                    oin_ex = _trunc_shr(acc * og, 14)
                    oi_ex = _sat16(_trunc_shr(oI * oA, 15) + oin_ex)
                oI = _ste(oI * oA15 + acc * og14, oi_ex)
                with torch.no_grad():
                    ov_ex = _sat16(oV + _away_shr(_sat16(oL + oI - oV) * oG, 15))
                oV = _ste(oV + (oL + oI - oV) * oG15, ov_ex)
            else:
                oI = oI * oA15 + acc * og14
                oV = oV + (oL + oI - oV) * oG15
            outs.append(oV)
            spks.append(z)
            if record_hidden_v:
                hvs.append(hV)
        if T == 0:
            e = torch.zeros(B, 0, c.n_out, dtype=dt, device=dev)
            return SNNOutput(e, torch.zeros(B, 0, c.n_hid, dtype=dt, device=dev),
                             torch.zeros(B, 0, c.n_hid, dtype=dt, device=dev) if record_hidden_v else None)
        return SNNOutput(torch.stack(outs, 1), torch.stack(spks, 1),
                         torch.stack(hvs, 1) if record_hidden_v else None)

    # -- fast path: hand-written BPTT --------------------------------------------
    def _forward_bptt(self, x, chip, params) -> SNNOutput:
        c = self.config
        x = x.to(self.dtype)
        hp, op = self.neuron_params(chip, params)
        w_in, w_rec, w_out = self.effective_weights()
        tot_in = torch.matmul(x, w_in) * float(1 << c.shift_in)  # autograd handles W_in
        noise = _noise(c, x.shape[1], self.dtype, x.device)
        out_v, spikes = _LoopFn.apply(tot_in, w_rec, w_out, c, self.mode == "fixed", hp, op, noise,
                                      self.surrogate, self.beta)
        return SNNOutput(out_v, spikes)


def _noise(c: CoreConfig, T: int, dtype, device) -> Optional[torch.Tensor]:
    """The core's seeded membrane noise of steps 0..T-1 [T, n_hid] (None when the core has none)."""
    if c.noise_amp <= 0:
        return None
    nz = np.zeros((T, c.n_hid), np.float64)
    for t in range(T):
        nz[t] = _ref_noise(c.noise_seed, t, c.n_hid, c.noise_amp)
    return torch.as_tensor(nz, dtype=dtype, device=device)


def _surrogate_grad(u: torch.Tensor, kind: str, b: float) -> torch.Tensor:
    if kind == "superspike":
        return 1.0 / (1.0 + b * u.abs()) ** 2
    if kind == "triangle":
        return torch.clamp(1.0 - b * u.abs(), min=0.0)
    s = torch.sigmoid(b * u)
    return 4.0 * s * (1.0 - s)


class _LoopFn(torch.autograd.Function):
    """The time loop with a hand-written backward (same gradients as the autograd engine).

    Forward: exact core arithmetic (``fixed``) or float, no autograd bookkeeping.
    Backward: BPTT through the straight-through linearisation
    ``I_t = a I_{t-1} + gh tot_t``, ``Vn_t = V_{t-1} + (L + I_t - V_{t-1}) Gh``,
    ``V_t = (1 - reset_t) Vn_t + reset_t R`` (detached reset), ``z_t = H(u_t) free_t``
    with the surrogate derivative, and the same for the readout.
    """

    @staticmethod
    def forward(ctx, tot_in, w_rec, w_out, c, fixed, hp, op, noise, surrogate, beta):
        B, T, H = tot_in.shape
        dt, dev = tot_in.dtype, tot_in.device
        n_out = w_out.shape[1]
        hA, hG, hL, hth, hR, hg = (hp[k] for k in FixedPopulation.FIELDS)
        oA, oG, oL, _, _, og = (op[k] for k in FixedPopulation.FIELDS)
        ha, hGs, hgs = hA / 32768.0, hG / 32768.0, hg / 16384.0
        oa, oGs, ogs = oA / 32768.0, oG / 32768.0, og / 16384.0
        ideal_h = bool(torch.all(hg == 16384))
        d_nom = float(c.hidden.v_th - c.hidden.v_leak) or 1.0
        wr = w_rec * float(1 << c.shift_rec)
        wo = w_out * float(1 << c.shift_out)
        t_ref = float(c.t_ref_steps)
        tin = tot_in.transpose(0, 1).contiguous()  # [T, B, H]
        Z = torch.zeros(T + 1, B, H, dtype=dt, device=dev)  # Z[t+1] = spikes of step t
        DZ = torch.empty(T, B, H, dtype=dt, device=dev)  # dz/dVn (surrogate, 0 if refractory)
        KEEP = torch.empty(T, B, H, dtype=dt, device=dev)  # 1 - reset
        OV = torch.empty(T, B, n_out, dtype=dt, device=dev)
        I = torch.zeros(B, H, dtype=dt, device=dev)
        V = hL.expand(B, H).clone()
        ref = torch.zeros(B, H, dtype=dt, device=dev)
        oI = torch.zeros(B, n_out, dtype=dt, device=dev)
        oV = oL.expand(B, n_out).clone()
        for t in range(T):
            tot = torch.addmm(tin[t], Z[t], wr)
            if fixed:
                inp = tot if ideal_h else torch.trunc(tot * hgs)
                I = torch.clamp_(torch.trunc(I * ha).add_(inp), -32768.0, 32767.0)
                e = torch.clamp_((I - V).add_(hL), -32768.0, 32767.0).mul_(hGs)
                vn = V + torch.copysign(torch.ceil(e.abs()), e)
                if noise is not None:
                    vn.add_(noise[t])
                vn.clamp_(-32768.0, 32767.0)
            else:
                I = (I * ha).add_(tot * hgs)
                vn = V + (I - V).add_(hL).mul_(hGs)
                if noise is not None:
                    vn.add_(noise[t])
            free = (ref <= 0).to(dt)
            u = (vn - hth).mul_(1.0 / d_nom)
            z = (u >= 0).to(dt).mul_(free)
            DZ[t] = _surrogate_grad(u, surrogate, beta).mul_(free).mul_(1.0 / d_nom)
            keep = 1.0 - (1.0 - free).add_(z)  # 0 where refractory or spiking
            KEEP[t] = keep
            V = vn * keep + hR * (1.0 - keep)
            ref = (ref - (1.0 - free)).add_(z * t_ref)
            Z[t + 1] = z
            acc = z @ wo
            if fixed:
                oin = torch.trunc(acc * ogs)
                oI = torch.clamp_(torch.trunc(oI * oa).add_(oin), -32768.0, 32767.0)
                e = torch.clamp_((oI - oV).add_(oL), -32768.0, 32767.0).mul_(oGs)
                oV = torch.clamp_(oV + torch.copysign(torch.ceil(e.abs()), e), -32768.0, 32767.0)
            else:
                oI = (oI * oa).add_(acc * ogs)
                oV = oV + (oI - oV).add_(oL).mul_(oGs)
            OV[t] = oV
        ctx.save_for_backward(Z, DZ, KEEP, wr, wo)
        ctx.consts = (ha, hGs, hgs, oa, oGs, ogs, c.shift_rec, c.shift_out)
        return OV.transpose(0, 1), Z[1:].transpose(0, 1)

    @staticmethod
    def backward(ctx, g_ov, g_z):
        Z, DZ, KEEP, wr, wo = ctx.saved_tensors
        ha, hGs, hgs, oa, oGs, ogs, sh_rec, sh_out = ctx.consts
        T, B, H = DZ.shape
        n_out = wo.shape[1]
        dt, dev = DZ.dtype, DZ.device
        g_ov = torch.zeros(T, B, n_out, dtype=dt, device=dev) if g_ov is None else g_ov.transpose(0, 1)
        g_z = None if g_z is None else g_z.transpose(0, 1)
        DTOT = torch.empty(T, B, H, dtype=dt, device=dev)
        DACC = torch.empty(T, B, n_out, dtype=dt, device=dev)
        wrT, woT = wr.t().contiguous(), wo.t().contiguous()
        dI = torch.zeros(B, H, dtype=dt, device=dev)
        dV = torch.zeros(B, H, dtype=dt, device=dev)
        dzr = torch.zeros(B, H, dtype=dt, device=dev)
        doI = torch.zeros(B, n_out, dtype=dt, device=dev)
        doV = torch.zeros(B, n_out, dtype=dt, device=dev)
        one_m_hG, one_m_oG = 1.0 - hGs, 1.0 - oGs
        for t in range(T - 1, -1, -1):
            doV = g_ov[t] + doV                      # adjoint of oV_t
            doI_t = doV * oGs + doI                  # adjoint of oI_t
            dacc = doI_t * ogs
            DACC[t] = dacc
            dz = torch.addmm(dzr, dacc, woT)
            if g_z is not None:
                dz = dz + g_z[t]
            dvn = dz * DZ[t] + KEEP[t] * dV          # adjoint of Vn_t
            dI_t = dvn * hGs + dI                    # adjoint of I_t
            dtot = dI_t * hgs
            DTOT[t] = dtot
            dzr = dtot @ wrT                         # to z_{t-1} through W_rec
            dI = dI_t * ha
            dV = dvn * one_m_hG
            doI = doI_t * oa
            doV = doV * one_m_oG
        g_tin = DTOT.transpose(0, 1)
        Zf = Z[:-1].reshape(T * B, H)
        g_wrec = (Zf.t() @ DTOT.reshape(T * B, H)) * float(1 << sh_rec)
        g_wout = (Z[1:].reshape(T * B, H).t() @ DACC.reshape(T * B, n_out)) * float(1 << sh_out)
        return g_tin, g_wrec, g_wout, None, None, None, None, None, None, None


# ---------------------------------------------------------------------------
# readout scores and regularisation

def _time_mask(lengths: torch.Tensor, T: int, device) -> torch.Tensor:
    return torch.arange(T, device=device)[None, :] < lengths[:, None]


def readout_scores(out_v: torch.Tensor, lengths: torch.Tensor, how: str = "max") -> torch.Tensor:
    """Per-unit score over the valid steps of each sample: max (the core's offline rule) or mean."""
    B, T, _ = out_v.shape
    m = _time_mask(lengths, T, out_v.device)[:, :, None]
    if how == "max":
        return torch.where(m, out_v, torch.full_like(out_v, -1e9)).max(dim=1).values
    if how == "mean":
        return (out_v * m).sum(1) / lengths.clamp(min=1)[:, None].to(out_v.dtype)
    raise ValueError(f"readout must be 'max' or 'mean', got {how!r}")


def rate_regularizer(spikes: torch.Tensor, lengths: torch.Tensor, lower: float, upper: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-neuron rate bounds (Cramer et al. 2022 style), rates in spikes per step.

    Upper: every neuron of every sample whose rate exceeds ``upper`` is penalised by
    ``(rate - upper)^2`` (mean over neurons and samples).  Lower: every neuron whose
    batch-mean rate is below ``lower`` is penalised by ``(lower - rate)^2`` (so silent
    neurons are pulled back into use).  Returns (upper_loss, lower_loss).
    """
    B, T, _ = spikes.shape
    m = _time_mask(lengths, T, spikes.device)[:, :, None].to(spikes.dtype)
    rate = (spikes * m).sum(1) / lengths.clamp(min=1)[:, None].to(spikes.dtype)  # [B, H]
    up = torch.relu(rate - upper).pow(2).mean()
    low = torch.relu(lower - rate.mean(0)).pow(2).mean()
    return up, low
