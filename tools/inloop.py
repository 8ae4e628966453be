"""In-the-loop training on virtual chips (issue 13; Cramer et al., PNAS 2022).

Each :class:`VirtualChip` plays one BrainScaleS-2-like chip: the C core with that chip's seeded
device mismatch (``spikewire.config.Chip``), optional temporal membrane noise and the 6-bit
weights.  For every batch the forward pass runs on the chip, one C call per sample, and records
what a chip shows: the hidden spikes, the CADC readout of the hidden membranes and the CADC
readout of the readout membranes.  The backward pass runs in PyTorch through the surrogate model
(``spikewire.tools.snn``'s hand-written BPTT, with the *nominal* neuron parameters of the
model, never the chip's): the recorded spikes, the spike-triggered resets and refractory
periods and the surrogate derivative evaluated at the recorded membranes take the place of the
model's own forward values, and the loss is computed on the recorded readout.  Value from the
chip, gradient from the model.

The trainer only holds a :class:`VirtualChip`; it reads observables through
:meth:`VirtualChip.observe` and never the chip's per-neuron parameters.

    spikewire train --in-the-loop --init software.swm --chip 7 --mismatch 0.2 \\
        --data PATH/TO/fsdd --out runs/chip7 [--noise AMP] [--epochs 4]

fine-tunes a software-pretrained model on chip 7 (docs/in-the-loop.md).  Without ``--init`` it
first trains a software model with the recipe of docs/training.md (the same options as
``spikewire train``) and then fine-tunes it in the loop.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch

from spikewire.config import Chip, CoreConfig, FixedPopulation, apply_chip
from spikewire.core import Core
from spikewire.decision import classify_scores
from spikewire.events import Events
from spikewire.model import Model
from spikewire.progress import run_logging
from spikewire.reference import cadc as cadc_code
from spikewire.tools.snn import SNN, SNNOutput, _LoopFn, _surrogate_grad
from spikewire.tools.trainer import flush_denormals

log = logging.getLogger("spikewire.tools.inloop")

__all__ = ["VirtualChip", "Observation", "ThresholdEstimate", "chip_forward", "InLoopNet", "hidden_adc_range",
           "decode_cadc", "free_from_spikes",
           "net_from_model", "finetune", "FinetuneConfig", "evaluate_on_chip", "main"]


# ---------------------------------------------------------------------------
# what the chip shows

def decode_cadc(code: np.ndarray, base: int, shift: int) -> np.ndarray:
    """Membrane value a CADC code stands for: the lower edge of its bin, ``base + code * 2^shift``
    (inverse of ``reference.cadc`` inside its range; codes 0 and 255 also stand for everything
    below / above)."""
    return base + code.astype(np.int64) * (1 << shift)


def hidden_adc_range(config: CoreConfig) -> tuple[int, int]:
    """CADC range of the hidden membranes: four nominal thresholds wide, from one below the leak
    potential to three above (``v_leak - d .. v_leak + 3d``, d = v_th - v_leak) in 256 codes, so
    the membranes around every chip's threshold (and above it, before the reset) are inside."""
    h = config.hidden
    d = max(1, h.v_th - h.v_leak)
    shift = max(0, math.ceil(math.log2(4 * d / 256)))
    base = max(-32768, h.v_leak - d)
    return int(base), int(min(8, shift))


class Observation(NamedTuple):
    """What the chip shows for a batch of B samples of T steps."""

    spikes: np.ndarray  # uint8 [B, T, n_hid]
    hid_code: np.ndarray  # uint8 [B, T, n_hid] CADC code of the hidden membranes before reset
    out_code: np.ndarray  # uint8 [B, T, n_out] CADC code of the readout membranes
    hid_range: tuple  # (base, shift) of the hidden CADC
    out_range: tuple  # (base, shift) of the readout CADC
    free: np.ndarray  # uint8 [B, T, n_hid] 1 where the neuron was not refractory in that step


class VirtualChip:
    """One simulated chip: the C core of ``config`` with ``params`` (the model's nominal per-neuron
    parameters) deviated by ``chip``'s mismatch, plus temporal noise of amplitude ``noise_amp``.

    Noise is drawn afresh for every sample (the core's seeded stream with a per-sample seed from
    ``noise_seed``), so it varies from trial to trial as on a chip while a run stays reproducible.
    The chip's parameters are private: callers get observables from :meth:`observe`.
    """

    def __init__(self, config: CoreConfig, params: tuple[FixedPopulation, FixedPopulation], chip: Chip,
                 noise_amp: int = 0, noise_seed: int = 0):
        if not isinstance(chip, Chip):
            raise TypeError(f"chip must be a spikewire.config.Chip, got {type(chip).__name__}")
        self.chip = chip  # its identity (seed and spreads), as written on a chip's label
        self.noise_amp = int(noise_amp)
        self._config = dataclasses.replace(config, noise_amp=self.noise_amp, noise_seed=0)  # validates noise_amp
        self.__params = (apply_chip(params[0], chip, 0), apply_chip(params[1], chip, 1))
        self._noise_rng = np.random.default_rng([int(noise_seed), 13])
        self.hid_range = hidden_adc_range(config)
        self.out_range = (config.cadc_base, config.cadc_shift)
        self.samples_run = 0
        self._core = None if self.noise_amp else Core(self._config, chip=chip, params=self.__params)

    def describe(self) -> dict:
        """The chip's label: what a model file records about the chip it was trained for."""
        return {"chip": dataclasses.asdict(self.chip), "noise_amp": self.noise_amp}

    def _core_for_sample(self) -> Core:
        if self._core is not None:
            return self._core
        seed = int(self._noise_rng.integers(2**63))
        return Core(dataclasses.replace(self._config, noise_seed=seed), chip=self.chip, params=self.__params)

    def observe(self, weights: dict[str, np.ndarray], events: Sequence[Events], n_steps: int) -> Observation:
        """Run every sample from rest for ``n_steps`` steps (shorter event lists are padded with empty
        steps) with the int8 ``weights`` and return what the chip shows: spikes, the CADC codes of the
        hidden membranes before reset (``Core.run_ex``'s ``hid_v_pre``: what was compared with the
        chip's threshold) and of the readout membranes, and the refractory state of every step."""
        c = self._config
        B, T = len(events), int(n_steps)
        spikes = np.zeros((B, T, c.n_hid), np.uint8)
        out_code = np.zeros((B, T, c.n_out), np.uint8)
        hid_v = np.zeros((B, T, c.n_hid), np.int16)
        free = np.ones((B, T, c.n_hid), np.uint8)
        core = self._core
        if core is not None:
            for k in ("in", "rec", "out"):
                core.set_weights(k, weights[k])
        for b, ev in enumerate(events):
            ip = np.asarray(ev.indptr, np.int64)
            if ip.shape[0] - 1 > T:
                raise ValueError(f"sample {b} has {ip.shape[0] - 1} steps, more than n_steps={T}")
            if ip.shape[0] - 1 < T:
                ip = np.concatenate([ip, np.full(T + 1 - ip.shape[0], ip[-1], np.int64)])
            if self._core is None:  # noise: a core with this sample's noise seed
                core = self._core_for_sample()
                for k in ("in", "rec", "out"):
                    core.set_weights(k, weights[k])
            try:
                core.reset()
                r = core.run_ex(Events(ip, ev.channels), record=("spikes", "hid_v_pre", "hid_ref", "cadc"))
            finally:
                if core is not self._core:
                    core.close()
            spikes[b] = r.spikes
            out_code[b] = r.cadc
            hid_v[b] = r.hid_v_pre
            if T > 1:
                free[b, 1:] = r.hid_ref[:-1] == 0  # refractory in step t: counter left by step t-1
        hb, hs = self.hid_range
        self.samples_run += B
        return Observation(spikes, cadc_code(hid_v, hb, hs), out_code, self.hid_range, self.out_range, free)

    def close(self) -> None:
        if self._core is not None:
            self._core.close()


class ThresholdEstimate:
    """Per-neuron firing thresholds of a chip, inferred from what it shows (never from its parameters).

    In a step where a neuron was free, it spiked exactly when its membrane before reset reached its
    threshold.  A spike read at CADC code k bounds the threshold from above (below the upper edge of
    bin k), a free step without a spike read at code k > 0 bounds it from below (above the lower edge
    of bin k); saturated codes (0 without, 255 with a spike) say nothing.  :meth:`update` tightens
    the bounds with every observation; :meth:`values` is the middle of the bounds, and where a neuron
    has only one side (or none) yet, the nominal threshold moved inside them.
    """

    def __init__(self, nominal: np.ndarray, hid_range: tuple[int, int]):
        self.nominal = np.asarray(nominal, np.float64).copy()
        self.hid_range = tuple(hid_range)
        self.lo = np.full(self.nominal.shape, -np.inf)
        self.hi = np.full(self.nominal.shape, np.inf)

    def update(self, obs: Observation) -> None:
        if tuple(obs.hid_range) != self.hid_range:
            raise ValueError(f"observation's hidden CADC range {obs.hid_range} is not {self.hid_range}")
        H = self.nominal.shape[0]
        code = obs.hid_code.reshape(-1, H).astype(np.int32)
        z = obs.spikes.reshape(-1, H).astype(bool)
        quiet = obs.free.reshape(-1, H).astype(bool) & ~z
        k_spk = np.where(z & (code < 255), code, 256).min(0)  # lowest code a spike was read at
        k_quiet = np.where(quiet & (code > 0), code, -1).max(0)  # highest code without a spike
        base, shift = self.hid_range
        hi = np.where(k_spk <= 255, base + (k_spk + 1.0) * (1 << shift), np.inf)
        lo = np.where(k_quiet >= 0, base + k_quiet * float(1 << shift), -np.inf)
        self.hi = np.minimum(self.hi, hi)
        self.lo = np.maximum(self.lo, lo)

    def values(self) -> np.ndarray:
        both = self.known
        mid = 0.5 * (np.where(both, self.lo, 0.0) + np.where(both, self.hi, 0.0))
        return np.where(both, mid, np.clip(self.nominal, self.lo, self.hi))

    @property
    def known(self) -> np.ndarray:
        """Neurons with both bounds (spiked and stayed quiet at some point)."""
        return np.isfinite(self.lo) & np.isfinite(self.hi)


# ---------------------------------------------------------------------------
# the graph: chip values forward, surrogate model backward

def free_from_spikes(z: np.ndarray, t_ref: int) -> np.ndarray:
    """1 where a neuron was not refractory at step t, from its spikes z [B, T, H] (``ref`` of
    docs/fixed-point.md: a spike at step s makes the neuron refractory in steps s+1 .. s+t_ref)."""
    B, T, H = z.shape
    if t_ref <= 0 or T == 0:
        return np.ones(z.shape, np.uint8)
    c = np.zeros((B, T + 1, H), np.int32)
    np.cumsum(z, axis=1, out=c[:, 1:])
    lo = np.maximum(np.arange(T) - t_ref, 0)
    recent = c[:, np.arange(T)] - c[:, lo]  # spikes in steps t-t_ref .. t-1
    return (recent == 0).astype(np.uint8)


class _ChipLoopFn(torch.autograd.Function):
    """Forward: the chip's recorded readout and spikes.  Backward: ``_LoopFn``'s BPTT through the
    nominal model, with the chip's spikes, resets/refractory periods and the surrogate derivative
    at the chip's membranes (the tensors ``_LoopFn`` would have saved from its own forward)."""

    @staticmethod
    def forward(ctx, tot_in, w_rec, w_out, c, hp, op, z_obs, v_obs, free, ov_obs, surrogate, beta):
        dt = tot_in.dtype
        hA, hG, hL, hth, hR, hg = (hp[k] for k in FixedPopulation.FIELDS)
        oA, oG, oL, _, _, og = (op[k] for k in FixedPopulation.FIELDS)
        d_nom = float(c.hidden.v_th - c.hidden.v_leak) or 1.0
        Zt = z_obs.transpose(0, 1)  # [T, B, H]
        T, B, H = Zt.shape
        free = free.transpose(0, 1)
        u = (v_obs.transpose(0, 1) - hth) / d_nom
        DZ = _surrogate_grad(u, surrogate, beta) * free / d_nom
        KEEP = free - Zt  # 0 where refractory or spiking (a refractory neuron never spikes)
        Z = torch.zeros(T + 1, B, H, dtype=dt, device=tot_in.device)
        Z[1:] = Zt
        wr = w_rec * float(1 << c.shift_rec)
        wo = w_out * float(1 << c.shift_out)
        ctx.save_for_backward(Z, DZ.contiguous(), KEEP.contiguous(), wr, wo)
        ctx.consts = (hA / 32768.0, hG / 32768.0, hg / 16384.0, oA / 32768.0, oG / 32768.0, og / 16384.0,
                      c.shift_rec, c.shift_out)
        return ov_obs.view_as(ov_obs), z_obs.view_as(z_obs)

    @staticmethod
    def backward(ctx, g_ov, g_z):
        g_tin, g_wrec, g_wout = _LoopFn.backward(ctx, g_ov, g_z)[:3]
        return (g_tin, g_wrec, g_wout) + (None,) * 9


def _dense_to_events(x: torch.Tensor) -> list[Events]:
    counts = x.detach().cpu().numpy()
    if counts.size and (counts.min() < 0 or not np.array_equal(counts, np.round(counts))):
        raise ValueError("in-the-loop input must be non-negative integer event counts")
    return [Events.from_raster(counts[b].astype(np.int64)) for b in range(counts.shape[0])]


def chip_forward(net: SNN, chip: VirtualChip, x: torch.Tensor, thresholds=None) -> tuple[SNNOutput, Observation]:
    """The in-the-loop forward pass on input counts ``x`` [B, T, n_in]: returns the graph's output
    (readout membranes decoded from the chip's CADC codes, the chip's hidden spikes) and the
    observation it came from.  ``net`` must be in fixed mode (6-bit weights, float64).

    The backward pass evaluates the surrogate derivative at the chip's membranes before reset (the
    middle of each CADC bin), relative to ``thresholds``: per hidden neuron in membrane units, or a
    :class:`ThresholdEstimate` of this chip (updated with this observation first, then used), or,
    when None, the model's nominal thresholds."""
    if net.mode != "fixed":
        raise ValueError("in-the-loop training needs the network in fixed mode (the chip runs 6-bit weights)")
    c = net.config
    B, T, _ = x.shape
    obs = chip.observe(net.int_weights(), _dense_to_events(x), T)
    dt, dev = net.dtype, net.w_in.device
    hp, op = net.neuron_params()  # the nominal parameters the model was built with, not the chip's
    if isinstance(thresholds, ThresholdEstimate):
        thresholds.update(obs)
        thresholds = thresholds.values()
    if thresholds is not None:
        th = np.asarray(thresholds, np.float64)
        if th.shape != (c.n_hid,) or not np.all(np.isfinite(th)):
            raise ValueError(f"thresholds must be {c.n_hid} finite values, got shape {th.shape}")
        hp = {**hp, "v_th": torch.as_tensor(th, dtype=dt, device=dev)}
    w_in, w_rec, w_out = net.effective_weights()
    tot_in = torch.matmul(x.to(dt), w_in) * float(1 << c.shift_in)
    hb, hs = obs.hid_range
    ob, os_ = obs.out_range
    codes = np.arange(256)
    h_lut = torch.as_tensor(decode_cadc(codes, hb, hs) + 0.5 * (1 << hs), dtype=dt, device=dev)  # bin middles
    o_lut = torch.as_tensor(decode_cadc(codes, ob, os_).astype(np.float64), dtype=dt, device=dev)
    z = torch.as_tensor(obs.spikes, device=dev).to(dt)
    v = h_lut[torch.as_tensor(obs.hid_code, device=dev).long()]
    ov = o_lut[torch.as_tensor(obs.out_code, device=dev).long()]
    free = torch.as_tensor(obs.free, device=dev).to(dt)
    out_v, spikes = _ChipLoopFn.apply(tot_in, w_rec, w_out, c, hp, op, z, v, free, ov, net.surrogate, net.beta)
    return SNNOutput(out_v, spikes), obs


class InLoopNet:
    """Calls like an :class:`SNN` (``net(x)`` -> SNNOutput) but runs the forward pass on ``chip``;
    so the training loss (``spikewire.tools.train.loss_terms``) works unchanged.

    With ``estimate_thresholds`` (default) every observation refines a :class:`ThresholdEstimate`
    of the chip, and the surrogate is centred on it."""

    def __init__(self, net: SNN, chip: VirtualChip, estimate_thresholds: bool = True):
        self.net, self.chip = net, chip
        self.config = net.config
        self.last: Optional[Observation] = None
        self.thresholds = (ThresholdEstimate(net.neuron_params()[0]["v_th"].cpu().numpy(), chip.hid_range)
                           if estimate_thresholds else None)

    def __call__(self, x: torch.Tensor, chip=None) -> SNNOutput:
        if chip is not None:
            raise ValueError("the in-the-loop forward pass runs on its own chip; pass no software chip")
        out, self.last = chip_forward(self.net, self.chip, x, self.thresholds)
        return out


# ---------------------------------------------------------------------------
# fine-tuning a model

FORWARDS = ("chip", "software", "mismatch")


@dataclass
class FinetuneConfig:
    """A short fine-tune of a trained model.

    ``forward``: ``chip`` (in the loop on a :class:`VirtualChip`), ``software`` (the bit-exact
    fixed-mode model of the ideal chip) or ``mismatch`` (mismatch-aware software training: a
    fresh random chip with spread ``mismatch_spread`` per batch).
    """

    epochs: int = 4
    lr: float = 0.1  # Adam, integer weight units; cosine decay to lr * lr_min_frac
    lr_min_frac: float = 0.05
    batch_size: int = 32
    seed: int = 0
    forward: str = "chip"
    mismatch_spread: float = 0.0
    variant_offset: int = 0  # epoch e uses augmented training copy (offset + e) mod variants
    max_batches: Optional[int] = None  # cap per epoch (tests)
    threads: int = 1
    estimate_thresholds: bool = True  # centre the surrogate on the chip's thresholds inferred from its spikes

    def __post_init__(self) -> None:
        if self.forward not in FORWARDS:
            raise ValueError(f"forward must be one of {FORWARDS}, got {self.forward!r}")
        if not (isinstance(self.epochs, int) and self.epochs >= 0):
            raise ValueError(f"epochs must be an int >= 0, got {self.epochs!r}")
        if not (self.lr >= 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be >= 0, got {self.lr!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if self.forward == "mismatch" and not 0 < self.mismatch_spread <= 0.5:
            raise ValueError(f"mismatch-aware training needs a spread in (0, 0.5], got {self.mismatch_spread!r}")


def train_config_of(model: Model, **override):
    """The TrainConfig a model was trained with (its loss, augmentation and data settings), or the
    defaults when the file has none; ``override`` replaces fields (e.g. ``data``, ``cache``)."""
    from spikewire.tools.train import TrainConfig

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    d = {k: (tuple(v) if isinstance(v, list) and k not in ("wavs", "exclude_speakers") else v)
         for k, v in (model.training.get("config") or {}).items() if k in known}
    d.update(override)
    d["step_ms"] = model.core.dt_ms
    return TrainConfig(**d)


def net_from_model(model: Model, surrogate: str = "superspike", beta: float = 5.0) -> SNN:
    """The fixed-mode surrogate model of ``model``: its int8 weights, its nominal per-neuron parameters."""
    net = SNN(model.core, mode="fixed", surrogate=surrogate, beta=beta, seed=0)
    with torch.no_grad():
        net.w_in.copy_(torch.as_tensor(model.weights["in"].astype(np.float64)))
        net.w_rec.copy_(torch.as_tensor(model.weights["rec"].astype(np.float64)))
        net.w_out.copy_(torch.as_tensor(model.weights["out"].astype(np.float64)))
    net.params = model.params
    net.clamp_weights_()
    if any(not np.array_equal(net.int_weights()[k], model.weights[k]) for k in ("in", "rec", "out")):
        raise ValueError("the model's recurrent weights have autapses (a non-zero diagonal); "
                         "the surrogate model keeps them zero")
    return net


def _lr_at(f: FinetuneConfig, step: int, total: int) -> float:
    k = min(step, total) / max(total, 1)
    return f.lr * (f.lr_min_frac + (1 - f.lr_min_frac) * 0.5 * (1 + math.cos(math.pi * k)))


def finetune(model: Model, data, tcfg, fcfg: FinetuneConfig, chip: Optional[VirtualChip] = None,
             on_epoch=None) -> tuple[Model, list[dict]]:
    """Fine-tune ``model`` on ``data`` (a ``spikewire.tools.train.Data``) with the loss of ``tcfg``.

    Returns the new model (int8 weights; everything else as ``model``) and the per-epoch history
    (loss terms, training accuracy, wall and CPU time of the epoch, wall time of its forward passes
    and losses).
    ``on_epoch(epoch, model)`` is called after each epoch (e.g. to evaluate).
    """
    if fcfg.forward == "chip" and chip is None:
        raise ValueError("in-the-loop fine-tuning needs a VirtualChip")
    torch.set_num_threads(fcfg.threads)
    with flush_denormals():  # decaying adjoints would crawl through denormals; restored on return
        return _finetune(model, data, tcfg, fcfg, chip, on_epoch)


def _finetune(model, data, tcfg, fcfg, chip, on_epoch):
    from spikewire.tools.train import batches, dense_batch, loss_terms

    torch.manual_seed(fcfg.seed)
    net = net_from_model(model, tcfg.surrogate, tcfg.beta)
    opt = torch.optim.Adam([{"params": [net.w_in, net.w_out], "scale": 1.0},
                            {"params": [net.w_rec], "scale": tcfg.rec_lr_scale}], lr=fcfg.lr)
    fwd = InLoopNet(net, chip, fcfg.estimate_thresholds) if fcfg.forward == "chip" else net
    history: list[dict] = []
    n_train = len(data.train_variant(fcfg.variant_offset % tcfg.variants))
    per_epoch = math.ceil(n_train / fcfg.batch_size)
    if fcfg.max_batches:
        per_epoch = min(per_epoch, fcfg.max_batches)
    total, step = per_epoch * fcfg.epochs, 0
    current = model
    for epoch in range(fcfg.epochs):
        t0, c0 = time.perf_counter(), time.process_time()
        train_set = data.train_variant((fcfg.variant_offset + epoch) % tcfg.variants)
        rng = np.random.default_rng([fcfg.seed, 13, epoch])
        bl = batches(train_set, fcfg.batch_size, rng)[:per_epoch]
        agg: dict = {}
        t_chip = 0.0
        net.train()
        for idx in bl:
            x, lens, y = dense_batch(train_set, idx, net.config.n_in)
            sw_chip = None
            if fcfg.forward == "mismatch":
                s = fcfg.mismatch_spread
                sw_chip = Chip(seed=int(rng.integers(2**63)), threshold=s, leak=s, decay=s, gain=s)
            for g in opt.param_groups:
                g["lr"] = _lr_at(fcfg, step, total) * g["scale"]
            opt.zero_grad(set_to_none=True)
            tc = time.perf_counter()
            loss, m, _ = loss_terms(fwd, x, lens, y, tcfg, sw_chip)
            t_chip += time.perf_counter() - tc
            loss.backward()
            if tcfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), tcfg.grad_clip)
            opt.step()
            net.clamp_weights_()
            step += 1
            for k, val in m.items():
                agg[k] = agg.get(k, 0.0) + val * len(idx)
        n = sum(len(i) for i in bl)
        rec = {k: v / max(n, 1) for k, v in agg.items()}
        rec.update(epoch=epoch, forward=fcfg.forward, lr=_lr_at(fcfg, step, total),
                   time_s=time.perf_counter() - t0, cpu_s=time.process_time() - c0, forward_loss_s=t_chip,
                   samples=n)
        current = dataclasses.replace(model, weights=net.int_weights())
        if on_epoch is not None:
            rec.update(on_epoch(epoch, current) or {})
        history.append(rec)
        log.info("fine-tune epoch %d/%d (%s): loss %.4f acc %.4f rate %.4f | %.1f s (forward+loss %.1f s)%s",
                 epoch + 1, fcfg.epochs, fcfg.forward, rec.get("loss", float("nan")), rec.get("acc", float("nan")),
                 rec.get("rate", float("nan")), rec["time_s"], t_chip,
                 "".join(f" | {k} {v:.4f}" for k, v in rec.items() if k.startswith("eval_")))
    return current, history


# ---------------------------------------------------------------------------
# measuring a model on a chip

def chip_codes(model: Model, samples, chip: Optional[Chip], noise_amp: int = 0, noise_seed: int = 0
               ) -> np.ndarray:
    """Per-unit max readout CADC codes of each sample (``spikewire.tools.train.Sample``) on a chip
    (ideal when None); with ``noise_amp`` the chip's temporal noise differs per sample."""
    vc = VirtualChip(model.core, model.params, chip or Chip(), noise_amp, noise_seed)
    out = np.zeros((len(samples), model.core.n_out), np.int32)
    try:
        for i, s in enumerate(samples):
            o = vc.observe(model.weights, [Events(s.indptr, s.channels)], s.n_steps)
            out[i] = o.out_code[0].max(0) if s.n_steps else 0
    finally:
        vc.close()
    return out


def evaluate_on_chip(model: Model, samples, chip: Optional[Chip], noise_amp: int = 0, noise_seed: int = 0
                     ) -> dict:
    """Accuracy of ``model``'s offline decision (``spikewire.decision.classify_scores``, rejections count as
    errors, as ``spikewire eval``) on ``samples`` run on a chip."""
    codes = chip_codes(model, samples, chip, noise_amp, noise_seed)
    n_words = len(model.vocabulary)
    pred = classify_scores(np.asarray(codes).astype(np.uint8), n_words, model.has_none_unit,
                           model.decision.threshold, model.decision.offline_reject)
    labels = np.array([s.label for s in samples], np.int64)
    return {"acc": float((pred == labels).mean()) if len(labels) else float("nan"),
            "rejected": int((pred == -1).sum()), "n": int(len(labels))}


def model_digest(model_path: Path) -> str:
    return hashlib.sha256(Path(model_path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------
# command line: spikewire train --in-the-loop ...

def _git_commit() -> str:
    from spikewire.tools.export import _git_commit as g

    return g()


def in_loop_model(base: Model, tuned: Model, vchip: VirtualChip, fcfg: FinetuneConfig, history: list,
                  base_ref: str, metrics: dict) -> Model:
    """The fine-tuned model with its provenance: the chip it was trained for, the base model, the
    fine-tune settings and history (``training``), and what was measured (``metrics``)."""
    training = {"in_the_loop": {**vchip.describe(), "finetune": dataclasses.asdict(fcfg), "history": history,
                                "base_model": base_ref, "git_commit": _git_commit(),
                                "command": "spikewire train --in-the-loop " + " ".join(sys.argv[1:])},
                "config": base.training.get("config", {}), "base_training": base.training}
    return dataclasses.replace(tuned, training=training, metrics={**metrics})


def main(argv: Optional[Sequence[str]] = None) -> int:
    from spikewire.model import load
    from spikewire.tools.datasets import DIGIT_WORDS
    from spikewire.tools.train import Data, TrainConfig, export_model, frontend_config, train

    p = argparse.ArgumentParser(
        prog="spikewire train --in-the-loop",
        description="Fine-tune a trained model on a virtual chip: forward pass on the chip's C core "
                    "(its mismatch, noise and 6-bit weights), backward pass through the surrogate model "
                    "(docs/in-the-loop.md).")
    p.add_argument("--data", required=True, help="FSDD folder (with recordings/)")
    p.add_argument("--out", required=True, help="run folder: the model, in-the-loop.json, log")
    p.add_argument("--init", default="", metavar="MODEL",
                   help="software-trained model to fine-tune (path or shipped name); without it a software "
                        "model is first trained with the recipe of docs/training.md into OUT/software/")
    p.add_argument("--chip", type=int, required=True, metavar="SEED", help="the chip: its mismatch seed")
    p.add_argument("--mismatch", type=float, default=0.05, metavar="SPREAD",
                   help="relative spread of threshold, leak, decays and synaptic gain (default 0.05, as "
                        "spikewire eval --chip)")
    p.add_argument("--noise", type=int, default=0, metavar="AMP",
                   help="temporal membrane noise of the chip, uniform +-AMP membrane units, new per sample")
    p.add_argument("--epochs", type=int, default=FinetuneConfig.epochs)
    p.add_argument("--lr", type=float, default=FinetuneConfig.lr)
    p.add_argument("--batch-size", type=int, default=FinetuneConfig.batch_size)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=FinetuneConfig.threads)
    p.add_argument("--cache", default="", help="cache folder (default $SPIKEWIRE_CACHE or ~/.cache/spikewire)")
    p.add_argument("--exclude-speaker", action="append", default=[], metavar="NAME",
                   help="with no --init: leave this FSDD speaker out of the software training")
    p.add_argument("--name", default="", help="model name (default: the base model's)")
    p.add_argument("--model", default="", help="model file to write (default OUT/NAME-chipSEED.swm)")
    a = p.parse_args(argv)
    out = Path(a.out)
    try:  # bad settings, model or data: one clear line, nothing trained
        chip = Chip(seed=a.chip, threshold=a.mismatch, leak=a.mismatch, decay=a.mismatch, gain=a.mismatch)
        fcfg = FinetuneConfig(epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, seed=a.seed, threads=a.threads)
        if not 0 <= a.noise <= 4096:
            raise ValueError(f"--noise must be in 0..4096 membrane units, got {a.noise}")
        base = load(a.init) if a.init else None
        if base is not None:
            tcfg = train_config_of(base, data=a.data, cache=a.cache, out=str(out))
        else:
            tcfg = TrainConfig(data=a.data, out=str(out / "software"), cache=a.cache, seed=a.seed,
                               threads=a.threads, exclude_speakers=a.exclude_speaker)
        data = (Data(tcfg, base.frontend, base.vocabulary) if base is not None
                else Data(tcfg, frontend_config(tcfg), DIGIT_WORDS))
    except (ValueError, TypeError, OSError) as e:  # DatasetError, ModelFileError, a missing model file
        print(f"spikewire train --in-the-loop: error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    run_logging(out / "in-the-loop.log")
    if base is None:
        log.info("no --init: training the software model first (%s)", tcfg.out)
        res = train(tcfg, resume=True, data=data)
        sw_path = Path(tcfg.out) / "kws-digits.swm"
        base = export_model(res, tcfg, sw_path, "kws-digits")
        base_ref = f"{sw_path} sha256:{model_digest(sw_path)}"
    else:
        base_ref = (f"{a.init} sha256:{model_digest(Path(a.init))}" if Path(a.init).is_file() else a.init)
    test = data.clean(data.test) if data.test else []
    vchip = VirtualChip(base.core, base.params, chip, a.noise, noise_seed=a.seed)
    before = evaluate_on_chip(base, test, chip, a.noise, a.seed) if test else None
    if before:
        log.info("base model on chip %d (spread %.3f, noise %d): accuracy %.4f on %d test files",
                 a.chip, a.mismatch, a.noise, before["acc"], before["n"])
    t0 = time.time()
    tuned, hist = finetune(base, data, tcfg, fcfg, vchip)
    wall = time.time() - t0
    after = evaluate_on_chip(tuned, test, chip, a.noise, a.seed) if test else None
    metrics = {"chip": dataclasses.asdict(chip), "noise_amp": a.noise,
               "test_set": base.metrics.get("test_set", "FSDD test split"),
               "chip_test_acc_before": before and before["acc"], "chip_test_acc": after and after["acc"],
               "chip_test_rejected": after and after["rejected"], "test_n": after and after["n"],
               "finetune_wall_s": round(wall, 1),
               "epoch_s": [round(h["time_s"], 2) for h in hist]}
    model = in_loop_model(base, tuned, vchip, fcfg, hist, base_ref, metrics)
    if a.name:
        model = dataclasses.replace(model, name=a.name)
    path = Path(a.model) if a.model else out / f"{model.name}-chip{a.chip}.swm"
    model.save(path)
    (out / "in-the-loop.json").write_text(json.dumps({"model": str(path), **metrics}, indent=1))
    log.info("wrote %s: accuracy on chip %d %s -> %s", path, a.chip,
             "-" if before is None else f"{before['acc']:.4f}", "-" if after is None else f"{after['acc']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
