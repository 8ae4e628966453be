"""Training and test sets as lists of (events, label index): words through the runtime's own front
end, augmented copies cached as ``.npz`` bundles (never pickle), and length-bucketed batches."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from spikewire.audio import read_wav
from spikewire.events import Events
from spikewire.frontend import FrontEndConfig, encode

from .augment import in_context, noise_segment
from .datasets import SpikeCache, Utterance, default_cache_root, fsdd, wav_folder
from .recipe import TrainConfig
from .words import BACKGROUND_WORDS, HELDOUT_WORDS, espeak_clips

log = logging.getLogger(__name__)


@dataclass
class Sample:
    indptr: np.ndarray
    channels: np.ndarray
    label: int

    @property
    def n_steps(self) -> int:
        return int(self.indptr.shape[0]) - 1


def _encode_audio(x: np.ndarray, rate: int, fe: FrontEndConfig, max_steps: int,
                  skip: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Events of ``x``, at most ``max_steps``; the first ``skip`` samples are a lead-in that only the
    front end hears (its adaptive state, e.g. PCEN's smoothed level, carries over): the steps that
    end inside it are dropped."""
    ev = encode(x, rate, fe)
    k = min(int(skip * 1000.0 / rate / fe.step_ms), ev.n_steps) if skip > 0 else 0
    if k:
        ip = ev.indptr[k:]
        ev = Events(ip - ip[0], ev.channels[ip[0]:])
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
    """Training/test sets encoded through the front end (cached).

    ``split`` = (training, test) utterances; without it they are read from ``cfg.data`` (FSDD)
    and ``cfg.wavs``. Subclasses (the many-voices recipe) change how a training variant is drawn
    (:meth:`_variant_audio`), what its cache key covers (:meth:`_key_settings`) and where it is
    cached (``variant_dir``, ``variant_name``, ``variant_seed``); the rest is shared.
    """

    variant_dir = "train-v1"   # cache_root / variant_dir / <key>.npz
    variant_name = "train"     # the key's name for training variants
    variant_seed = 1000        # variant v draws from default_rng([cfg.seed, variant_seed + v])

    def __init__(self, cfg: TrainConfig, fe: FrontEndConfig, vocabulary: Sequence[str],
                 split: Optional[tuple[Sequence[Utterance], Sequence[Utterance]]] = None):
        self.cfg, self.fe = cfg, fe
        if abs(fe.step_ms - cfg.step_ms) > 1e-9:
            raise ValueError(f"front end step_ms={fe.step_ms} differs from the training step_ms={cfg.step_ms}")
        self.max_steps = int(round(cfg.max_ms / cfg.step_ms))
        self.vocab = list(vocabulary)
        self.none = len(self.vocab)
        self.cache_root = Path(cfg.cache) if cfg.cache else default_cache_root()
        self.spikes = SpikeCache(self.cache_root)
        self.fe_hash = fe.config_hash()[:32]
        if split is None:
            split = self._read_sources()
        self.train_utts, self.test = list(split[0]), list(split[1])
        self.espeak = (espeak_clips(self.cache_root / "espeak-v1", BACKGROUND_WORDS, cfg.espeak_per_word, 0)
                       if cfg.espeak_per_word > 0 else [])

    def _read_sources(self) -> tuple[list[Utterance], list[Utterance]]:
        cfg = self.cfg
        if cfg.data and cfg.exclude_speakers:
            train = fsdd(cfg.data, "all", exclude_speakers=cfg.exclude_speakers)
            test = fsdd(cfg.data, "all", speakers=cfg.exclude_speakers)
        else:
            train = fsdd(cfg.data, "train") if cfg.data else []
            test = fsdd(cfg.data, "test") if cfg.data else []
        for folder in cfg.wavs:
            u = wav_folder(folder, self.vocab)
            train += [x for x in u if x.split != "test"]
            test += [x for x in u if x.split == "test" and x.known]
        return train, test

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

    def _key_settings(self) -> list:
        """The training settings a cached set depends on (besides the front end, vocabulary and files)."""
        return [{k: v for k, v in self.cfg.to_dict().items()
                 if k in ("seed", "max_ms", "pre_ms", "post_ms", "noise_prob", "snr_db", "gain_db", "speed",
                          "n_noise", "espeak_per_word")}]

    def _key(self, what: str, variant: int, files: Sequence[Path]) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([what, variant, self.fe.to_json(), *self._key_settings(), self.vocab],
                            sort_keys=True).encode())
        for p in files:
            h.update(self.spikes.digest(p).encode())
        return h.hexdigest()[:24]

    def _variant_audio(self, rng: np.random.Generator) -> Iterator[tuple[np.ndarray, int, int]]:
        """(audio, rate, label) of one training variant before the noise segments: every training
        word in context, then the espeak background words."""
        for u in self.train_utts:
            x, r = read_wav(u.path)
            yield in_context(x, r, rng, self.cfg), r, self.label_of(u)
        for _, p in self.espeak:
            x, r = read_wav(p)
            yield in_context(x, r, rng, self.cfg), r, self.none

    def train_variant(self, variant: int) -> list[Sample]:
        """Augmented training set number ``variant`` (:meth:`_variant_audio`, then ``cfg.n_noise``
        noise segments as "no keyword"), cached."""
        files = [u.path for u in self.train_utts] + [p for _, p in self.espeak]
        path = self.cache_root / self.variant_dir / f"{self._key(self.variant_name, variant, files)}.npz"

        def build():
            t0 = time.time()
            rng = np.random.default_rng([self.cfg.seed, self.variant_seed + variant])
            # _variant_audio yields (audio, rate, label) or (audio, rate, label, lead-in samples)
            out = [Sample(*_encode_audio(a[0], a[1], self.fe, self.max_steps, *a[3:]), a[2])
                   for a in self._variant_audio(rng)]
            for _ in range(self.cfg.n_noise):
                out.append(Sample(*_encode_audio(noise_segment(rng), 8000, self.fe, self.max_steps), self.none))
            log.info("encoded %s variant %d: %d samples (%d words of the vocabulary) in %.1f s", self.variant_name,
                     variant, len(out), sum(s.label != self.none for s in out), time.time() - t0)
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
