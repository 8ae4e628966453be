"""Offline surrogate-gradient training of keyword-spotting models for the spikewire core.

    python -m spikewire.tools.train --data /work/shared/data/fsdd --out runs/kws [--epochs N] [--seed S] [--resume]

Pipeline
--------
* Words: FSDD (train split; index 5..49) plus, optionally, folders of labelled WAVs
  (``--wavs DIR``, labels outside the vocabulary train the "no keyword" unit).  Every
  file goes through the *same* front end as the runtime (``spikewire.frontend.encode``);
  clean encodings are kept in :class:`spikewire.tools.datasets.SpikeCache`.
* Augmentation: each word is placed inside background context (0-300 ms before,
  100-300 ms after; silence or white/pink/brown noise at a random SNR) with a random
  gain, then encoded.  ``--variants`` deterministic augmented copies of the training
  set are encoded once and cached (``cache/train-v1/<hash>.npz``); epoch e uses copy
  e mod variants.
* "No keyword" unit: noise segments at random levels and non-digit words synthesised
  with espeak-ng (several voices, speeds, pitches; cached WAVs, generated
  deterministically), placed in the same kind of context.
* Model: :class:`spikewire.tools.snn.SNN` (64 in, 192 recurrent LIF, 11 leaky readout: fits
  the bss2 preset; 4 ms steps).  Float-mode epochs first (fast), then fixed-mode epochs at
  ``fixed_lr_scale`` of the learning rate whose forward pass is the core's integer
  arithmetic bit for bit.  Loss: cross entropy on the per-unit max (and, by default, also
  the mean) over time of the readout membrane, plus per-neuron rate bounds.  W_rec is
  learned; an exponential moving average of the weights is evaluated and exported
  (docs/training.md has the recipe and what each option did).
* Batches bucketed by length, BPTT, Adam with cosine decay, seeds everywhere,
  a checkpoint per epoch, ``--resume`` continues exactly.
* Export (:func:`export_model`): a ``spikewire.model.Model`` with integer weights, the
  ideal chip's integer parameters, the CADC range and offline threshold chosen on the
  training set (a starting point for the streaming decision; calibrate it with
  ``spikewire eval --calibrate``), the training config and metrics including the
  accuracy of the C core on the FSDD test split.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from spikewire.audio import read_wav
from spikewire.config import Chip, CoreConfig, FixedPopulation, PopulationConfig, decay_q15, fixed_params, gain_q15
from spikewire.decision import DecisionConfig
from spikewire.events import Events
from spikewire.frontend import FrontEndConfig, encode
from spikewire.model import Model
from spikewire.tools.datasets import DIGIT_WORDS, SpikeCache, Utterance, default_cache_root, fsdd, wav_folder
from spikewire.tools.words import BACKGROUND_WORDS, HELDOUT_WORDS, espeak_clips

log = logging.getLogger("spikewire.tools.train")

# Non-digit words for the "no keyword" unit (BACKGROUND_WORDS) and never-trained
# words for false accepts (HELDOUT_WORDS): tools/words.py.


# ---------------------------------------------------------------------------
# configuration

@dataclass
class TrainConfig:
    data: str = ""
    out: str = ""
    wavs: list = field(default_factory=list)
    # leave-speakers-out: train without these FSDD speakers, test on all their recordings
    exclude_speakers: list = field(default_factory=list)
    cache: str = ""
    seed: int = 0
    epochs: int = 48
    fixed_lr_scale: float = 0.1  # learning-rate factor in the fixed-mode epochs (1.0 lost 1.2 points)
    float_epochs: int = 40  # first epochs in float mode, the rest bit-exact fixed mode
    batch_size: int = 32
    lr: float = 1.0  # Adam, weights in integer units
    lr_min_frac: float = 0.05  # cosine decay to lr * this
    weight_decay: float = 0.0
    n_hid: int = 192  # 64 inputs + 192 recurrent rows = the 256 synapse rows of bss2
    variants: int = 8
    step_ms: float = 4.0  # front-end step = core time step
    # front-end settings other than step_ms (FrontEndConfig field -> value; the rest are its defaults)
    frontend: dict = field(default_factory=lambda: {"max_rate_hz": 400.0, "max_spikes_per_step": 8})
    max_ms: float = 1300.0  # crop longer samples
    pre_ms: tuple = (0, 300)
    post_ms: tuple = (100, 300)
    noise_prob: float = 0.7  # share of word samples whose context is noise (else silence)
    snr_db: tuple = (15.0, 40.0)
    gain_db: tuple = (-6.0, 6.0)
    speed: tuple = (1.0, 1.0)  # speed perturbation (tempo and pitch) factor range; (1, 1): off
    n_noise: int = 150  # background noise segments per variant
    espeak_per_word: int = 5  # clips per background word (voices/speeds/pitches)
    surrogate: str = "superspike"
    beta: float = 5.0
    readout: str = "max+mean"  # loss on max over time + mean over time; decisions use the max
    logit_scale: float = 512.0  # membrane units per logit
    rate_lower: float = 0.005  # spikes per step (5 Hz) per neuron, batch mean
    rate_upper: float = 0.06  # per neuron and sample (60 Hz)
    reg_lower: float = 100.0
    reg_upper: float = 100.0
    vmax_soft: float = 14000.0  # soft ceiling of the readout score (membrane units)
    reg_vmax: float = 0.1
    mismatch: bool = False  # fresh random chip per batch
    mismatch_spread: float = 0.05
    grad_clip: float = 10.0
    input_dropout: float = 0.0  # training only: each input event is dropped with this probability
    ema: float = 0.998  # per-step decay of an exponential moving average of the weights (0: off);
    # the average is what is evaluated each epoch and what is exported
    rec_lr_scale: float = 1.0  # learning-rate factor of W_rec (0: keep the initial recurrent weights)
    init_scale: tuple = (15.0, 4.0, 6.0)
    init_mean_in: float = 6.0
    threads: int = 2
    # core parameters
    tau_syn_ms: float = 10.0
    tau_mem_ms: float = 20.0
    # heterogeneous hidden time constants: (lo, hi) ms, log-uniform per neuron (empty: all equal)
    tau_syn_range_ms: tuple = ()
    tau_mem_range_ms: tuple = ()
    out_tau_syn_ms: float = 10.0
    out_tau_mem_ms: float = 100.0
    t_ref_steps: int = 2
    shift_in: int = 6
    shift_rec: int = 5
    shift_out: int = 6

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"TrainConfig: {msg}")

        need(self.step_ms > 0 and math.isfinite(self.step_ms), f"step_ms must be > 0, got {self.step_ms}")
        need(0 <= self.float_epochs <= self.epochs, f"float_epochs must be in 0..epochs, got {self.float_epochs}")
        need(0.0 <= self.ema < 1.0, f"ema must be in [0, 1), got {self.ema}")
        need(self.fixed_lr_scale >= 0, f"fixed_lr_scale must be >= 0, got {self.fixed_lr_scale}")
        need(0.0 <= self.input_dropout < 1.0, f"input_dropout must be in [0, 1), got {self.input_dropout}")
        need(len(self.speed) == 2 and 0 < self.speed[0] <= self.speed[1],
             f"speed must be (lo, hi) with 0 < lo <= hi, got {self.speed!r}")
        for name in ("tau_syn_range_ms", "tau_mem_range_ms"):
            r = getattr(self, name)
            need(not r or (len(r) == 2 and 0 < r[0] <= r[1]), f"{name} must be empty or (lo, hi) with 0 < lo <= hi, "
                 f"got {r!r}")
        need(not self.exclude_speakers or bool(self.data), "exclude_speakers needs data (an FSDD folder)")

    def core_config(self, n_in: int, n_out: int, cadc_base: int = -8192, cadc_shift: int = 6) -> CoreConfig:
        return CoreConfig(n_in=n_in, n_hid=self.n_hid, n_out=n_out, preset="bss2", dt_ms=self.step_ms,
                          hidden=PopulationConfig(tau_syn_ms=self.tau_syn_ms, tau_mem_ms=self.tau_mem_ms),
                          readout=PopulationConfig(tau_syn_ms=self.out_tau_syn_ms, tau_mem_ms=self.out_tau_mem_ms),
                          shift_in=self.shift_in, shift_rec=self.shift_rec, shift_out=self.shift_out,
                          t_ref_steps=self.t_ref_steps, cadc_base=cadc_base, cadc_shift=cadc_shift)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


# ---------------------------------------------------------------------------
# audio helpers

def _noise(rng: np.random.Generator, n: int, color: str) -> np.ndarray:
    """Unit-RMS white / pink (1/f power) / brown (1/f^2 power) noise."""
    w = rng.standard_normal(n)
    if color != "white" and n > 1:
        spec = np.fft.rfft(w)
        f = np.arange(spec.shape[0], dtype=np.float64)
        f[0] = 1.0
        spec = spec / (np.sqrt(f) if color == "pink" else f)
        spec[0] = 0.0
        w = np.fft.irfft(spec, n)
    rms = np.sqrt(np.mean(w ** 2)) if n else 1.0
    return w / (rms + 1e-12)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if x.size else 0.0


def in_context(x: np.ndarray, rate: int, rng: np.random.Generator, cfg: TrainConfig,
               noise_prob: Optional[float] = None, snr_db: Optional[tuple] = None) -> np.ndarray:
    """The utterance, sped up or slowed down by a random factor in ``cfg.speed``, with random gain
    inside random background context (float32 audio)."""
    lo_s, hi_s = cfg.speed
    if (lo_s, hi_s) != (1.0, 1.0) and x.size > 1:
        f = rng.uniform(lo_s, hi_s)  # > 1: faster (shorter, higher)
        x = np.interp(np.arange(0.0, x.size - 1, f), np.arange(x.size), x.astype(np.float64))
    gain = 10 ** (rng.uniform(*cfg.gain_db) / 20)
    pre = int(rng.uniform(*cfg.pre_ms) * rate / 1000)
    post = int(rng.uniform(*cfg.post_ms) * rate / 1000)
    y = np.concatenate([np.zeros(pre), x.astype(np.float64) * gain, np.zeros(post)])
    p = cfg.noise_prob if noise_prob is None else noise_prob
    if rng.random() < p:
        lo, hi = cfg.snr_db if snr_db is None else snr_db
        snr = rng.uniform(lo, hi)
        color = ("white", "pink", "brown")[int(rng.integers(3))]
        level = _rms(x) * gain / (10 ** (snr / 20))
        y = y + level * _noise(rng, y.shape[0], color)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def noise_segment(rng: np.random.Generator, rate: int = 8000) -> np.ndarray:
    """A background segment: coloured noise at a random level (-70..-15 dBFS RMS), 0.3-1.0 s."""
    n = int(rng.uniform(0.3, 1.0) * rate)
    color = ("white", "pink", "brown")[int(rng.integers(3))]
    level = 10 ** (rng.uniform(-70.0, -15.0) / 20)
    y = level * _noise(rng, n, color)
    if rng.random() < 0.3:  # a level change in the middle (doors, fans switching)
        k = int(rng.integers(n // 4, 3 * n // 4))
        y[k:] *= 10 ** (rng.uniform(-20, 20) / 20)
    return np.clip(y, -1, 1).astype(np.float32)


# ---------------------------------------------------------------------------
# datasets as lists of (events, label index)

@dataclass
class Sample:
    indptr: np.ndarray
    channels: np.ndarray
    label: int

    @property
    def n_steps(self) -> int:
        return int(self.indptr.shape[0]) - 1


def _encode_audio(x: np.ndarray, rate: int, fe: FrontEndConfig, max_steps: int) -> tuple[np.ndarray, np.ndarray]:
    ev = encode(x, rate, fe)
    if ev.n_steps > max_steps:
        ip = ev.indptr[:max_steps + 1]
        return ip.copy(), ev.channels[:ip[-1]].copy()
    return ev.indptr, ev.channels


def _pack(samples: list[Sample]) -> dict[str, np.ndarray]:
    lens = np.array([s.n_steps for s in samples], np.int64)
    nev = np.array([s.channels.shape[0] for s in samples], np.int64)
    return {"lens": lens, "nev": nev, "labels": np.array([s.label for s in samples], np.int64),
            "indptr": np.concatenate([s.indptr for s in samples]) if samples else np.zeros(0, np.int64),
            "channels": np.concatenate([s.channels for s in samples]) if samples else np.zeros(0, np.int32)}


def _unpack(d) -> list[Sample]:
    out, io, co = [], 0, 0
    for L, n, y in zip(d["lens"], d["nev"], d["labels"]):
        out.append(Sample(d["indptr"][io:io + L + 1], d["channels"][co:co + n], int(y)))
        io += L + 1
        co += n
    return out


def _cached_bundle(path: Path, build) -> list[Sample]:
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as d:
                return _unpack({k: d[k] for k in d.files})
        except Exception as e:  # corrupt: rebuild
            log.warning("cache bundle %s unreadable (%s); rebuilding", path, e)
    samples = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(suffix=".npz", dir=path.parent, delete=False) as tmp:
        np.savez(tmp, **_pack(samples))
        tmp_name = tmp.name
    os.replace(tmp_name, path)
    return samples


class Data:
    """Training/test sets encoded through the front end (cached)."""

    def __init__(self, cfg: TrainConfig, fe: FrontEndConfig, vocabulary: Sequence[str]):
        self.cfg, self.fe = cfg, fe
        if abs(fe.step_ms - cfg.step_ms) > 1e-9:
            raise ValueError(f"front end step_ms={fe.step_ms} differs from the training step_ms={cfg.step_ms}")
        self.max_steps = int(round(cfg.max_ms / cfg.step_ms))
        self.vocab = list(vocabulary)
        self.none = len(self.vocab)
        self.cache_root = Path(cfg.cache) if cfg.cache else default_cache_root()
        self.spikes = SpikeCache(self.cache_root)
        self.fe_hash = fe.config_hash()[:32]
        if cfg.data and cfg.exclude_speakers:
            train = fsdd(cfg.data, "all", exclude_speakers=cfg.exclude_speakers)
            self.test = fsdd(cfg.data, "all", speakers=cfg.exclude_speakers)
        else:
            train = fsdd(cfg.data, "train") if cfg.data else []
            self.test = fsdd(cfg.data, "test") if cfg.data else []
        for folder in cfg.wavs:
            u = wav_folder(folder, self.vocab)
            train += [x for x in u if x.split != "test"]
            self.test += [x for x in u if x.split == "test" and x.known]
        self.train_utts = train
        self.espeak = (espeak_clips(self.cache_root / "espeak-v1", BACKGROUND_WORDS, cfg.espeak_per_word, 0)
                       if cfg.espeak_per_word > 0 else [])

    def label_of(self, u: Utterance) -> int:
        return self.vocab.index(u.label) if (u.known and u.label in self.vocab) else self.none

    def clean(self, utts: Sequence[Utterance]) -> list[Sample]:
        """Clean encodings through SpikeCache (no augmentation)."""
        out = []
        for u in utts:
            ip, ch = self.spikes.get_or_encode(u.path, self._encode_file, self.fe_hash)
            out.append(Sample(ip, ch, self.label_of(u)))
        return out

    def _encode_file(self, path: Path):
        x, r = read_wav(path)
        return tuple(encode(x, r, self.fe))

    def _key(self, what: str, variant: int, files: Sequence[Path]) -> str:
        h = hashlib.sha256()
        aug = {k: v for k, v in self.cfg.to_dict().items()
               if k in ("seed", "max_ms", "pre_ms", "post_ms", "noise_prob", "snr_db", "gain_db", "speed", "n_noise",
                        "espeak_per_word")}
        h.update(json.dumps([what, variant, self.fe.to_json(), aug, self.vocab], sort_keys=True).encode())
        for p in files:
            h.update(self.spikes.digest(p).encode())
        return h.hexdigest()[:24]

    def train_variant(self, variant: int) -> list[Sample]:
        """Augmented training set number ``variant`` (words in context + background), cached."""
        files = [u.path for u in self.train_utts] + [p for _, p in self.espeak]
        path = self.cache_root / "train-v1" / f"{self._key('train', variant, files)}.npz"

        def build():
            t0 = time.time()
            rng = np.random.default_rng([self.cfg.seed, 1000 + variant])
            out = []
            for u in self.train_utts:
                x, r = read_wav(u.path)
                y = in_context(x, r, rng, self.cfg)
                out.append(Sample(*_encode_audio(y, r, self.fe, self.max_steps), self.label_of(u)))
            for _, p in self.espeak:
                x, r = read_wav(p)
                y = in_context(x, r, rng, self.cfg)
                out.append(Sample(*_encode_audio(y, r, self.fe, self.max_steps), self.none))
            for _ in range(self.cfg.n_noise):
                y = noise_segment(rng)
                out.append(Sample(*_encode_audio(y, 8000, self.fe, self.max_steps), self.none))
            log.info("encoded training variant %d: %d samples in %.1f s", variant, len(out), time.time() - t0)
            return out

        return _cached_bundle(path, build)

    def heldout_unknown(self) -> list[Sample]:
        """Unknown (never trained) espeak words in noise-free context: false-accept test set."""
        clips = espeak_clips(self.cache_root / "espeak-v1", HELDOUT_WORDS, 3, 1)
        files = [p for _, p in clips]
        path = self.cache_root / "train-v1" / f"{self._key('heldout', 0, files)}.npz"

        def build():
            rng = np.random.default_rng([self.cfg.seed, 99])
            out = []
            for _, p in clips:
                x, r = read_wav(p)
                out.append(Sample(*_encode_audio(in_context(x, r, rng, self.cfg, noise_prob=0.0), r, self.fe,
                                                 self.max_steps), self.none))
            return out

        return _cached_bundle(path, build)

    def noise_eval(self, n: int = 100) -> list[Sample]:
        rng = np.random.default_rng([self.cfg.seed, 98])
        return [Sample(*_encode_audio(noise_segment(rng), 8000, self.fe, self.max_steps), self.none)
                for _ in range(n)]


# ---------------------------------------------------------------------------
# batching

def batches(samples: list[Sample], batch_size: int, rng: Optional[np.random.Generator]) -> list[np.ndarray]:
    """Index batches bucketed by length; shuffled when ``rng`` is given."""
    n = len(samples)
    lens = np.array([s.n_steps for s in samples])
    if rng is None:
        order = np.argsort(lens, kind="stable")
        return [order[i:i + batch_size] for i in range(0, n, batch_size)]
    perm = rng.permutation(n)
    chunk = batch_size * 8
    out = []
    for i in range(0, n, chunk):
        idx = perm[i:i + chunk]
        idx = idx[np.argsort(lens[idx], kind="stable")]
        out += [idx[j:j + batch_size] for j in range(0, len(idx), batch_size)]
    return [out[k] for k in rng.permutation(len(out))]


def dense_batch(samples: list[Sample], idx: np.ndarray, n_in: int):
    import torch

    lens = np.array([samples[i].n_steps for i in idx])
    T = max(int(lens.max()), 1)
    x = np.zeros((len(idx), T, n_in), np.float32)
    for b, i in enumerate(idx):
        s = samples[i]
        steps = np.repeat(np.arange(s.n_steps), np.diff(s.indptr))
        np.add.at(x[b], (steps, s.channels), 1.0)
    y = np.array([samples[i].label for i in idx])
    return torch.from_numpy(x), torch.from_numpy(lens), torch.from_numpy(y)


# ---------------------------------------------------------------------------
# training

def _git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        c = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        d = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True,
                           text=True, timeout=10)
        return c.stdout.strip() + ("-dirty" if d.stdout.strip() else "")
    except Exception:
        return "unknown"


def frontend_config(cfg: TrainConfig) -> FrontEndConfig:
    """The front end a model trained with ``cfg`` listens through."""
    return FrontEndConfig(**{**cfg.frontend, "step_ms": cfg.step_ms})


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


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    f = cfg.lr_min_frac + (1 - cfg.lr_min_frac) * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))
    return cfg.lr * f


def train(cfg: TrainConfig, resume: bool = False, data: Optional[Data] = None,
          fe: Optional[FrontEndConfig] = None, vocabulary: Sequence[str] = DIGIT_WORDS,
          max_batches: Optional[int] = None, stop_after: Optional[int] = None) -> dict:
    """Train; returns {"net", "data", "history", "core", "fe"}.

    ``max_batches`` caps batches per epoch (tests); ``stop_after`` ends this call after that
    many epochs (an interruption: ``resume=True`` continues from the checkpoint).
    """
    import torch

    torch.set_num_threads(cfg.threads)
    torch.set_flush_denormal(True)  # decaying float currents would otherwise crawl through denormals
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
                with torch.no_grad():
                    if ema is None:
                        ema = {k: p.detach().clone() for k, p in net.named_parameters()}
                    else:
                        for k, p in net.named_parameters():
                            ema[k].mul_(cfg.ema).add_(p.detach(), alpha=1.0 - cfg.ema)
            for k, val in m.items():
                agg[k] = agg.get(k, 0.0) + val * len(idx)
            if sys.stderr.isatty():
                print(f"\r  epoch {epoch + 1} batch {bi + 1}/{len(bl)} loss {m['loss']:.3f}", end="", file=sys.stderr)
        if sys.stderr.isatty():
            print("\r", end="", file=sys.stderr)
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
    if ema is not None:  # the averaged weights are the result
        _load_weights(net, ema)
    set_mode(net, "fixed")
    return {"net": net, "data": data, "history": history, "core": core, "fe": fe}


# ---------------------------------------------------------------------------
# export

def _cadc(scores_v: np.ndarray, base: int, shift: int) -> np.ndarray:
    return np.clip(np.floor_divide(np.floor(scores_v).astype(np.int64) - base, 1 << shift), 0, 255)


def _classify_codes(codes: np.ndarray, n_words: int, threshold: int) -> np.ndarray:
    """runtime.decision.classify (offline_reject) on per-unit max codes, vectorised; -1 = rejected."""
    w = codes[:, :n_words].argmax(1)
    best = codes[np.arange(len(w)), w]
    rej = (best < threshold) | (codes[:, n_words] > best)
    return np.where(rej, -1, w)


def choose_readout(vmax: np.ndarray, labels: np.ndarray, n_words: int, v_leak: int) -> tuple[int, int, int]:
    """CADC base/shift and decision threshold maximising training accuracy (rejects count for none)."""
    best = None
    target = np.where(labels == n_words, -1, labels)
    for shift in (4, 5, 6, 7):
        span = 256 << shift
        hi = np.percentile(vmax.max(1), 99.5)
        for base in np.unique(np.round(np.linspace(hi - span, hi - span / 4, 13)).astype(int)):
            base = int(np.clip(base, -32768, 32767))
            codes = _cadc(vmax, base, shift)
            leak_code = int(_cadc(np.array([[v_leak]]), base, shift)[0, 0])
            for thr in range(max(leak_code + 1, 1), 256, 8):
                acc = float((_classify_codes(codes, n_words, thr) == target).mean())
                key = (acc, -abs(thr - 128))
                if best is None or key > best[0]:
                    best = (key, base, shift, thr)
    return best[1], best[2], best[3]


def core_scores(model: Model, samples: list[Sample]) -> np.ndarray:
    """Per-unit max CADC codes of each sample on the C core (ideal chip)."""
    core = model.make_core()
    out = np.zeros((len(samples), model.core.n_out), np.int32)
    for i, s in enumerate(samples):
        core.reset()
        r = core.run(Events(s.indptr, s.channels))
        out[i] = r.cadc.max(0) if r.cadc.shape[0] else 0
    return out


def export_model(result: dict, cfg: TrainConfig, path: Path, name: str = "kws-digits",
                 extra_metrics: Optional[dict] = None) -> Model:
    """Write the trained network as a runtime Model and measure it on the C core."""
    from spikewire.decision import classify

    net, data, fe = result["net"], result["data"], result["fe"]
    set_mode(net, "fixed")
    n_words = len(data.vocab)
    v_leak = net.config.readout.v_leak
    # CADC range + threshold from the (first) augmented training set
    train_set = data.train_variant(0)
    sc_tr, _ = evaluate_torch(net, train_set, cfg)
    labels_tr = np.array([s.label for s in train_set])
    base, shift, thr = choose_readout(sc_tr + v_leak, labels_tr, n_words, v_leak)
    core_cfg = dataclasses.replace(result["core"], cadc_base=base, cadc_shift=shift)
    # a starting point for the streaming segment rule in milliseconds, whatever the step; the offline
    # threshold doubles as the activity level and the peak.  Calibrate it afterwards
    # (spikewire eval --calibrate, docs/evaluation.md): kws-digits went from 91 % to 97 % hits that way.
    steps = lambda ms: max(1, int(round(ms / cfg.step_ms)))  # noqa: E731
    decision = DecisionConfig(rule="segment", threshold=thr, peak=thr, margin=8, min_steps=steps(40),
                              hold_steps=steps(100), max_steps=steps(1500), refractory_ms=400)
    model = Model(name=name, vocabulary=list(data.vocab), has_none_unit=True, frontend=fe, core=core_cfg,
                  params=net.params or fixed_params(core_cfg), weights=net.int_weights(), decision=decision)
    metrics: dict = {}
    test = data.clean(data.test)
    labels = np.array([s.label for s in test])
    sc_te, rate = evaluate_torch(net, test, cfg)
    torch_codes = _cadc(sc_te + v_leak, base, shift)
    torch_pred = _classify_codes(torch_codes, n_words, thr)
    codes = core_scores(model, test)
    core_pred = np.array([(-1 if p is None else p) for p in
                          (classify(np.asarray(c, np.uint8)[None, :], n_words, True, decision)[0] for c in codes)])
    metrics["fsdd_test_n"] = int(len(test))
    metrics["test_set"] = (f"all recordings of held-out speakers {sorted(cfg.exclude_speakers)}"
                           if cfg.exclude_speakers else "FSDD test split (recording index 0-4)")
    metrics["torch_fixed_test_acc_argmax"] = float((sc_te.argmax(1) == labels).mean())
    metrics["torch_fixed_test_acc"] = float((torch_pred == labels).mean())
    metrics["core_test_acc"] = float((core_pred == labels).mean())
    metrics["core_test_rejected"] = int((core_pred == -1).sum())
    metrics["torch_core_codes_identical"] = bool(np.array_equal(torch_codes, codes))
    metrics["gap_points"] = round(100 * (metrics["torch_fixed_test_acc"] - metrics["core_test_acc"]), 3)
    metrics["hidden_spikes_per_step"] = float(rate * net.config.n_hid)
    metrics["hidden_rate_hz"] = float(rate * 1000.0 / net.config.dt_ms)
    if shutil.which("espeak-ng"):
        unk = data.heldout_unknown()
        c_unk = core_scores(model, unk)
        metrics["false_accept_unknown_words"] = float((_classify_codes(c_unk, n_words, thr) >= 0).mean())
        metrics["false_accept_unknown_words_n"] = len(unk)
    nz = data.noise_eval()
    c_nz = core_scores(model, nz)
    metrics["false_accept_noise"] = float((_classify_codes(c_nz, n_words, thr) >= 0).mean())
    metrics["false_accept_noise_n"] = len(nz)
    metrics["train_acc_decision"] = float((_classify_codes(_cadc(sc_tr + v_leak, base, shift), n_words, thr)
                                           == np.where(labels_tr == n_words, -1, labels_tr)).mean())
    hist = result["history"]
    metrics["epochs"] = len(hist)
    metrics["train_wall_s"] = round(sum(h["time_s"] for h in hist), 1)
    metrics["float_test_acc_last_float_epoch"] = next((h.get("test_acc") for h in reversed(hist)
                                                       if h["mode"] == "float"), None)
    metrics.update(extra_metrics or {})
    model.metrics = metrics
    model.training = {"config": cfg.to_dict(), "git_commit": _git_commit(), "data": str(cfg.data),
                      "frontend_hash": fe.config_hash(), "history": hist,
                      "command": "python -m spikewire.tools.train " + " ".join(sys.argv[1:]) if sys.argv else ""}
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return model


def leave_one_speaker_out(cfg: TrainConfig, name: str = "kws-digits") -> dict:
    """Train one model per FSDD speaker with that speaker left out (``OUT/loso-SPEAKER``), measure
    it on the C core on every recording of the held-out speaker, write ``OUT/loso.json``.
    Each run resumes from its checkpoint, so an interrupted sweep continues where it stopped."""
    out = Path(cfg.out)
    speakers = sorted({u.speaker for u in fsdd(cfg.data, "all") if u.speaker})
    per = {}
    for spk in speakers:
        c = dataclasses.replace(cfg, out=str(out / f"loso-{spk}"), exclude_speakers=[spk])
        path = Path(c.out) / f"{name}-without-{spk}.swm"
        t0 = time.time()
        res = train(c, resume=True)
        m = export_model(res, c, path, name).metrics
        per[spk] = {k: m.get(k) for k in ("core_test_acc", "torch_fixed_test_acc", "gap_points", "fsdd_test_n",
                                           "core_test_rejected", "false_accept_unknown_words",
                                           "false_accept_noise")}
        per[spk]["model"] = str(path)
        per[spk]["wall_s"] = round(time.time() - t0, 1)
        log.info("held-out %s: core accuracy %.4f on %d recordings", spk, m["core_test_acc"], m["fsdd_test_n"])
    accs = {s: v["core_test_acc"] for s, v in per.items()}
    summary = {"per_speaker": per, "mean_core_acc": float(np.mean(list(accs.values()))),
               "min_core_acc": min(accs.values()), "worst_speaker": min(accs, key=accs.get),
               "config": cfg.to_dict()}
    (out / "loso.json").write_text(json.dumps(summary, indent=1))
    return summary


# ---------------------------------------------------------------------------

def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spikewire.tools.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="FSDD folder (with recordings/)")
    p.add_argument("--out", required=True, help="run folder: checkpoint.pt, model, log")
    p.add_argument("--wavs", action="append", default=[], help="extra folder of labelled WAVs (repeatable)")
    p.add_argument("--cache", default="", help="cache folder (default $SPIKEWIRE_CACHE or ~/.cache/spikewire)")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--float-epochs", type=int, default=TrainConfig.float_epochs)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mismatch", type=float, default=0.0, help="train on a fresh chip per batch with this spread")
    p.add_argument("--surrogate", default=TrainConfig.surrogate)
    p.add_argument("--readout", default=TrainConfig.readout, choices=["max", "mean", "max+mean"])
    p.add_argument("--threads", type=int, default=TrainConfig.threads)
    p.add_argument("--rec-lr-scale", type=float, default=TrainConfig.rec_lr_scale)
    p.add_argument("--tau", type=float, nargs=4, metavar=("SYN", "MEM", "OUT_SYN", "OUT_MEM"),
                   default=[TrainConfig.tau_syn_ms, TrainConfig.tau_mem_ms, TrainConfig.out_tau_syn_ms,
                            TrainConfig.out_tau_mem_ms], help="time constants (ms) of hidden and readout")
    p.add_argument("--exclude-speaker", action="append", default=[], metavar="NAME",
                   help="leave this FSDD speaker out of training and test on all of its recordings (repeatable)")
    p.add_argument("--leave-one-speaker-out", action="store_true",
                   help="train one model per FSDD speaker without that speaker (OUT/loso-NAME/), test each on "
                        "all recordings of its held-out speaker, summarise in OUT/loso.json; resumable")
    p.add_argument("--tau-syn-range", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                   help="per-neuron hidden synaptic time constants, log-uniform in LO..HI ms")
    p.add_argument("--tau-mem-range", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                   help="per-neuron hidden membrane time constants, log-uniform in LO..HI ms")
    p.add_argument("--step-ms", type=float, default=TrainConfig.step_ms, help="time step of front end and core")
    p.add_argument("--n-hid", type=int, default=TrainConfig.n_hid)
    p.add_argument("--ema", type=float, default=TrainConfig.ema, help="weight-average decay per step (0: off)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--name", default="kws-digits")
    p.add_argument("--model", default="", help="model file to write (default OUT/NAME.swm)")
    a = p.parse_args(argv)
    if a.leave_one_speaker_out and a.exclude_speaker:
        p.error("--leave-one-speaker-out chooses the excluded speaker itself; drop --exclude-speaker")
    out = Path(a.out)
    try:  # bad settings or data: one clear line, no traceback, nothing trained
        cfg = TrainConfig(data=a.data, out=str(out), wavs=a.wavs, cache=a.cache, seed=a.seed, epochs=a.epochs,
                          exclude_speakers=a.exclude_speaker, step_ms=a.step_ms, n_hid=a.n_hid, ema=a.ema,
                          float_epochs=a.float_epochs, batch_size=a.batch_size, lr=a.lr, surrogate=a.surrogate,
                          readout=a.readout, threads=a.threads, rec_lr_scale=a.rec_lr_scale,
                          tau_syn_ms=a.tau[0], tau_mem_ms=a.tau[1], out_tau_syn_ms=a.tau[2],
                          out_tau_mem_ms=a.tau[3], tau_syn_range_ms=tuple(a.tau_syn_range or ()),
                          tau_mem_range_ms=tuple(a.tau_mem_range or ()), mismatch=a.mismatch > 0,
                          mismatch_spread=a.mismatch or TrainConfig.mismatch_spread)
        data = None if a.leave_one_speaker_out else Data(cfg, frontend_config(cfg), DIGIT_WORDS)
        if a.leave_one_speaker_out:
            fsdd(cfg.data, "all")
    except ValueError as e:  # includes DatasetError
        print(f"python -m spikewire.tools.train: error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(out / "train.log")])
    if a.leave_one_speaker_out:
        summary = leave_one_speaker_out(cfg, a.name)
        log.info("leave-one-speaker-out: %s", json.dumps(summary, indent=1))
        return 0
    t0 = time.time()
    res = train(cfg, resume=a.resume, data=data)
    path = Path(a.model) if a.model else out / f"{a.name}.swm"
    model = export_model(res, cfg, path, a.name)
    log.info("wrote %s in %.1f s total", path, time.time() - t0)
    log.info("metrics: %s", json.dumps(model.metrics, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
