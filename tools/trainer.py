"""The training loop: :func:`train` (float-mode epochs, then bit-exact fixed-mode epochs; Adam with
cosine decay, a weight average, a checkpoint per epoch, ``resume`` continues exactly).
torch is imported inside the functions (the [train] extra)."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from spikewire.config import Chip, CoreConfig, FixedPopulation, decay_q15, fixed_params, gain_q15
from spikewire.frontend import FrontEndConfig

from spikewire.progress import Progress

from .datasets import DIGIT_WORDS
from .recipe import TrainConfig, frontend_config
from .trainset import Data, Sample, batches, dense_batch

log = logging.getLogger(__name__)


def neuron_params(cfg: TrainConfig, core: CoreConfig) -> tuple[FixedPopulation, FixedPopulation]:
    """Integer per-neuron parameters: the config's, with per-neuron hidden time constants drawn
    log-uniformly from ``tau_*_range_ms`` when given (seeded; they ship in the model file)."""
    hid, out = fixed_params(core)
    rng = np.random.default_rng([cfg.seed, 7])
    repl = {}
    for key, rang, conv in (("decay_syn", cfg.tau_syn_range_ms, decay_q15),
                            ("gain_mem", cfg.tau_mem_range_ms, gain_q15)):
        if rang:
            lo, hi = (float(v) for v in rang)  # checked by TrainConfig
            taus = np.exp(rng.uniform(math.log(lo), math.log(hi), core.n_hid))
            repl[key] = np.array([conv(float(t), core.dt_ms) for t in taus], np.int32)
    return (dataclasses.replace(hid, **repl) if repl else hid), out


def build_net(cfg: TrainConfig, core: CoreConfig, mode: str):
    from spikewire.tools.snn import SNN

    net = SNN(core, mode=mode, surrogate=cfg.surrogate, beta=cfg.beta, init_scale=tuple(cfg.init_scale),
              init_mean_in=cfg.init_mean_in, seed=cfg.seed)
    if cfg.tau_syn_range_ms or cfg.tau_mem_range_ms:
        net.params = neuron_params(cfg, core)
    return net


def set_mode(net, mode: str) -> None:
    net.set_mode(mode)


def mode_of_epoch(cfg: TrainConfig, epoch: int) -> str:
    return "float" if epoch < cfg.float_epochs else "fixed"


def loss_terms(net, x, lens, y, cfg: TrainConfig, chip=None):
    import torch
    import torch.nn.functional as F
    from spikewire.tools.snn import rate_regularizer, readout_scores

    out = net(x, chip=chip)
    oL = float(net.config.readout.v_leak)
    s = readout_scores(out.out_v, lens, "max" if cfg.readout == "max+mean" else cfg.readout) - oL
    ce = F.cross_entropy(s / cfg.logit_scale, y)
    if cfg.readout == "max+mean":  # dense gradient from every step + the decision's max
        ce = ce + F.cross_entropy((readout_scores(out.out_v, lens, "mean") - oL) / cfg.logit_scale, y)
    up, low = rate_regularizer(out.spikes, lens, cfg.rate_lower, cfg.rate_upper)
    vmax = torch.relu(s - cfg.vmax_soft).div(cfg.logit_scale).pow(2).mean()
    loss = ce + cfg.reg_upper * up + cfg.reg_lower * low + cfg.reg_vmax * vmax
    acc = (s.argmax(1) == y).double().mean()
    f = lambda t: float(t.detach())  # noqa: E731
    return loss, {"loss": f(loss), "ce": f(ce), "acc": f(acc), "up": f(up), "low": f(low),
                  "rate": f(out.spikes.mean())}, s


def evaluate_torch(net, samples: list[Sample], cfg: TrainConfig, batch_size: int = 64):
    """Per-sample readout max scores [N, n_out] (membrane units above leak) and the mean
    hidden rate (spikes per neuron and step)."""
    import torch
    from spikewire.tools.snn import readout_scores

    scores = np.zeros((len(samples), net.config.n_out))
    n_spk = n_steps = 0
    with torch.no_grad():
        for idx in batches(samples, batch_size, None):
            x, lens, _ = dense_batch(samples, idx, net.config.n_in)
            out = net(x)
            how = "max" if cfg.readout == "max+mean" else cfg.readout
            scores[idx] = (readout_scores(out.out_v, lens, how) - float(net.config.readout.v_leak)).double().numpy()
            m = (torch.arange(x.shape[1])[None, :] < lens[:, None]).to(out.spikes.dtype)
            n_spk += float((out.spikes.sum(2) * m).sum())
            n_steps += int(lens.sum())
    return scores, n_spk / max(n_steps, 1) / net.config.n_hid


def _load_weights(net, weights: dict) -> None:
    """Copy ``{name: tensor}`` into the net's parameters."""
    import torch

    with torch.no_grad():
        for k, p in net.named_parameters():
            p.copy_(weights[k])


def denormals_flushed() -> bool:
    """Whether torch flushes denormal floats to zero on this thread now (torch has a setter only,
    so this multiplies the smallest normal float32 by 0.5 and looks whether a denormal came out)."""
    import torch

    tiny = torch.finfo(torch.float32).tiny
    return bool((torch.full((1,), tiny, dtype=torch.float32) * 0.5).item() == 0.0)


@contextlib.contextmanager
def flush_denormals():
    """torch's flush-to-zero on inside, and the state before restored on the way out: the flag is
    a CPU mode of the thread, left on it changes every later float computation of the process
    (it broke a Hypothesis test once)."""
    import torch

    before = denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


@contextlib.contextmanager
def _weights(net, ema: Optional[dict]):
    """Temporarily run ``net`` with the averaged weights ``ema`` (no-op when None)."""
    if ema is None:
        yield
        return
    saved = {k: p.detach().clone() for k, p in net.named_parameters()}
    _load_weights(net, ema)
    try:
        yield
    finally:
        _load_weights(net, saved)


def ema_update(ema: Optional[dict], net, decay: float, n: int) -> dict:
    """The weight average after optimiser step ``n`` (1, 2, ...): the bias-corrected exponential
    average ``sum_k (1-d) d^(n-k) w_k / (1 - d^n)`` of the weights after steps 1..n.

    Without the correction (the average started as the weights of step 1 and decayed by ``d``
    per step) those first, nearly untrained weights kept d^(n-1) of the average: 86 % after one
    epoch of 77 batches, 37 % after 500 steps, so a short run evaluated and exported them.  In long
    runs the two agree: the first weights' share is 5 % at n = 3 / (1 - d), 1,500 steps at 0.998.
    """
    import torch

    with torch.no_grad():
        if ema is None or n <= 1:
            return {k: p.detach().clone() for k, p in net.named_parameters()}
        a = (1.0 - decay) / (1.0 - decay ** n)  # share of the new weights; 1/n when decay -> 1
        for k, p in net.named_parameters():
            ema[k].mul_(1.0 - a).add_(p.detach(), alpha=a)
    return ema


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    f = cfg.lr_min_frac + (1 - cfg.lr_min_frac) * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))
    return cfg.lr * f


def train(cfg: TrainConfig, resume: bool = False, data: Optional[Data] = None,
          fe: Optional[FrontEndConfig] = None, vocabulary: Sequence[str] = DIGIT_WORDS,
          max_batches: Optional[int] = None, stop_after: Optional[int] = None, progress: bool = False) -> dict:
    """Train; returns {"net", "data", "history", "core", "fe"}.

    ``max_batches`` caps batches per epoch (tests); ``stop_after`` ends this call after that
    many epochs (an interruption: ``resume=True`` continues from the checkpoint).  ``progress``:
    epochs done, rate and time left on stderr (a bar with the batch and loss on a terminal).
    """
    import torch

    torch.set_num_threads(cfg.threads)
    with flush_denormals():  # decaying float currents would otherwise crawl through denormals
        return _train(cfg, resume, data, fe, vocabulary, max_batches, stop_after, progress)


def _train(cfg, resume, data, fe, vocabulary, max_batches, stop_after, progress) -> dict:
    import torch

    fe = fe or frontend_config(cfg)
    data = data or Data(cfg, fe, vocabulary)
    n_out = len(vocabulary) + 1
    core = cfg.core_config(fe.n_channels, n_out)
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "checkpoint.pt"
    torch.manual_seed(cfg.seed)
    net = build_net(cfg, core, mode_of_epoch(cfg, 0))
    groups = [{"params": [net.w_in, net.w_out], "scale": 1.0},
              {"params": [net.w_rec], "scale": cfg.rec_lr_scale}]
    opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, history, step = 0, [], 0
    ema = None  # {name: tensor} moving average of the weights (cfg.ema > 0)
    if resume and ckpt.exists():
        st = torch.load(ckpt, weights_only=False)
        net.load_state_dict(st["net"])
        opt.load_state_dict(st["opt"])
        start, history, step = st["epoch"] + 1, st["history"], st["step"]
        ema = st.get("ema")
        log.info("resumed from %s after epoch %d", ckpt, st["epoch"])
    test = data.clean(data.test) if data.test else []
    variants = {}
    # total optimiser steps for the cosine schedule (same for every variant size up to rounding)
    n_train = len(data.train_variant(0))
    per_epoch = math.ceil(n_train / cfg.batch_size)
    if max_batches:
        per_epoch = min(per_epoch, max_batches)
    total = per_epoch * cfg.epochs
    end = cfg.epochs if stop_after is None else min(cfg.epochs, start + stop_after)
    bar = Progress(max(end - start, 0), "train") if progress else None
    for epoch in range(start, end):
        t0 = time.time()
        mode = mode_of_epoch(cfg, epoch)
        if ema is not None and epoch == cfg.float_epochs:  # the fixed epochs start from the float average
            _load_weights(net, ema)
        set_mode(net, mode)
        v = epoch % cfg.variants
        if v not in variants:
            variants = {v: data.train_variant(v)}  # keep one in memory
        train_set = variants[v]
        rng = np.random.default_rng([cfg.seed, epoch])
        thin = torch.Generator().manual_seed(int(rng.integers(2**62))) if cfg.input_dropout > 0 else None
        bl = batches(train_set, cfg.batch_size, rng)
        if max_batches:
            bl = bl[:max_batches]
        agg = {}
        net.train()
        for bi, idx in enumerate(bl):
            x, lens, y = dense_batch(train_set, idx, core.n_in)
            if thin is not None:  # binomial thinning of the event counts
                x = torch.binomial(x, torch.full_like(x, 1.0 - cfg.input_dropout), generator=thin)
            chip = None
            if cfg.mismatch:
                s = cfg.mismatch_spread
                chip = Chip(seed=int(rng.integers(2**63)), threshold=s, leak=s, decay=s, gain=s)
            for g in opt.param_groups:
                g["lr"] = _lr_at(cfg, step, total) * g["scale"] * (cfg.fixed_lr_scale if mode == "fixed" else 1.0)
            opt.zero_grad(set_to_none=True)
            loss, m, _ = loss_terms(net, x, lens, y, cfg, chip)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            net.clamp_weights_()
            step += 1
            if cfg.ema > 0:
                ema = ema_update(ema, net, cfg.ema, step)
            for k, val in m.items():
                agg[k] = agg.get(k, 0.0) + val * len(idx)
            if bar is not None and bar.tty:
                bar.desc = f"train epoch {epoch + 1}/{cfg.epochs} batch {bi + 1}/{len(bl)} loss {m['loss']:.3f}"
                bar.update(0)
        if bar is not None:
            bar.clear()
        n = sum(len(i) for i in bl)
        rec = {k: v_ / n for k, v_ in agg.items()}
        rec.update(epoch=epoch, mode=net.mode, lr=_lr_at(cfg, step, total), time_s=time.time() - t0)
        if test:
            with _weights(net, ema):
                sc, rate = evaluate_torch(net, test, cfg)
            rec["test_acc"] = float((sc.argmax(1) == np.array([s.label for s in test])).mean())
            rec["test_rate"] = rate
        history.append(rec)
        log.info("epoch %3d/%d %-5s loss %.4f ce %.4f acc %.4f rate %.4f | test acc %s | %.1f s",
                 epoch + 1, cfg.epochs, net.mode, rec["loss"], rec["ce"], rec["acc"], rec["rate"],
                 f"{rec['test_acc']:.4f}" if "test_acc" in rec else "-", rec["time_s"])
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "epoch": epoch, "history": history,
                    "step": step, "config": cfg.to_dict(), "ema": ema}, tmp)
        os.replace(tmp, ckpt)
        if bar is not None:
            bar.desc = "train"
            bar.update()
    if bar is not None:
        bar.close()
    if ema is not None:  # the averaged weights are the result
        _load_weights(net, ema)
    set_mode(net, "fixed")
    return {"net": net, "data": data, "history": history, "core": core, "fe": fe}
