"""The many-voices training recipe (issue 11): every corpus, balanced by speaker, augmented.

    python -m spikewire.tools.voices --root ../shared/data --fold validation --out runs/voices

What it adds to ``spikewire train`` (whose modules it reuses for the network, the
optimiser, checkpoints and export: recipe, trainset, trainer, export):

* **Data from the speaker-disjoint protocol** (:mod:`spikewire.tools.protocol`):
  the training side of one fold over every corpus of
  :data:`~spikewire.tools.datasets.CORPORA` (digits of FSDD, Speech Commands and
  more-voices; the word corpora as the "no keyword" class).  ``--fsdd-test-out``
  also keeps the FSDD standard test split (recording index 0-4) out of training,
  so one run measures both the held-out speakers and the standard split.
* **Balanced sampling by speaker** (:func:`balanced_pick`): each augmented copy of the
  training set (a *variant*) takes at most ``fsdd_per_speaker`` clips of each FSDD
  speaker (a different subset per variant), every clip of the many-speaker digit
  corpora ``rare_repeats`` times (differently augmented), and ``n_words`` word clips
  drawn with weight 1 / (clips of that speaker), i.e. about evenly over speakers, plus
  every hard negative (more-voices words: "seventeen", "sixty", "ninety", ...).
* **Augmentation** (:func:`augment`, seeded per variant): speed 0.9-1.1, a random
  spectral tilt (first-order filter), a simple synthetic room impulse response
  (exponentially decaying noise tail, RT60 0.1-0.6 s) with probability ``room_prob``,
  the speech level set to -42..-8 dBFS (RMS over the loudest quarter of 10 ms frames), and
  background noise at 0-35 dB SNR: coloured noise or *babble* made of other training
  words (real speech of other speakers).
* The front end: ``normalize="pcen"`` (docs/frontend.md) with ``floor_db=-95``.

Everything is deterministic for a seed; variants are cached like train.py's
(``cache/voices-v2/<hash>.npz``).  The per-corpus evaluation on the C core is
:mod:`spikewire.tools.voices_eval`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from spikewire.audio import read_wav
from spikewire.frontend import FrontEndConfig
from spikewire.progress import run_logging
from spikewire.tools.datasets import CORPORA, DIGIT_WORDS, Utterance, load_corpus
from spikewire.tools.protocol import folds
from spikewire.tools.noise import unit_rms as _noise
from spikewire.tools.export import export_model
from spikewire.tools.recipe import TrainConfig, frontend_config
from spikewire.tools.trainer import train
from spikewire.tools.trainset import Data

log = logging.getLogger("spikewire.tools.voices")

#: front-end settings of the many-voices models (train.py's defaults + PCEN)
VOICES_FRONTEND = {"max_rate_hz": 400.0, "max_spikes_per_step": 8, "normalize": "pcen", "floor_db": -95.0}
#: ``--frontend log``: the overrides that give train.py's front end (no normalisation, log floor -65 dB)
LOG_FRONTEND = {"normalize": "none", "floor_db": -65.0}
#: corpus names of the synthetic voices (``--synthetic``; not in CORPORA: generated, not shared data)
SYNTH_DIGITS, SYNTH_WORDS = "synthetic-digits", "synthetic-words"
#: ``--fold all``: train on every speaker of every corpus (the shipped model; no speaker held out)
ALL_FOLD = "all"


@dataclass(frozen=True)
class Recipe:
    """Sampling and augmentation of one variant (all ranges inclusive, uniform)."""

    fsdd_per_speaker: int = 150
    rare_repeats: int = 3
    n_words: int = 700
    hard_negative_repeats: int = 1
    synth_per_voice: int = 10          # clips of each synthetic voice (--synthetic) per variant
    level_dbfs: tuple = (-42.0, -8.0)
    tilt: tuple = (-0.6, 0.6)          # first-order coefficient: y = x - a x[n-1] (a > 0: brighter)
    room_prob: float = 0.3
    rt60_s: tuple = (0.1, 0.6)
    noise_prob: float = 0.8
    snr_db: tuple = (0.0, 35.0)
    babble_prob: float = 0.3           # share of the noisy contexts whose noise is babble
    speed: tuple = (0.9, 1.1)
    pre_ms: tuple = (0.0, 300.0)
    post_ms: tuple = (100.0, 300.0)
    # speech before the sample that only the front end hears (augment_in_stream): PCEN's smoothed
    # level after another word, as in a stream; level relative to the sample's, gap before its context
    history_prob: float = 0.0
    history_gap_s: tuple = (0.1, 1.5)
    history_level_db: tuple = (-10.0, 6.0)

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ValueError(f"Recipe: {msg}")

        for name in ("level_dbfs", "tilt", "rt60_s", "snr_db", "speed", "pre_ms", "post_ms", "history_gap_s",
                     "history_level_db"):
            r = getattr(self, name)
            need(len(r) == 2 and r[0] <= r[1], f"{name} must be (lo, hi) with lo <= hi, got {r!r}")
        need(self.level_dbfs[1] <= 0.0, f"level_dbfs must be <= 0 dBFS, got {self.level_dbfs!r}")
        need(-1.0 < self.tilt[0] and self.tilt[1] < 1.0, f"tilt must lie in (-1, 1), got {self.tilt!r}")
        need(self.speed[0] > 0.0, f"speed must be positive, got {self.speed!r}")
        need(self.rt60_s[0] > 0.0, f"rt60_s must be positive, got {self.rt60_s!r}")
        need(self.pre_ms[0] >= 0.0 and self.post_ms[0] >= 0.0, "pre_ms/post_ms must be >= 0")
        need(self.history_gap_s[0] >= 0.0, f"history_gap_s must be >= 0, got {self.history_gap_s!r}")
        for name in ("room_prob", "noise_prob", "babble_prob", "history_prob"):
            need(0.0 <= getattr(self, name) <= 1.0, f"{name} must be in 0..1, got {getattr(self, name)!r}")
        for name in ("fsdd_per_speaker", "rare_repeats", "n_words", "hard_negative_repeats", "synth_per_voice"):
            need(isinstance(getattr(self, name), int) and getattr(self, name) >= 0,
                 f"{name} must be a non-negative int, got {getattr(self, name)!r}")


# ---------------------------------------------------------------------------
# audio augmentation

def active_rms(x: np.ndarray, rate: int) -> float:
    """RMS over the loudest quarter of the 10 ms frames (the speech, not the pauses)."""
    n = max(1, rate // 100)
    k = x.shape[0] // n
    if k == 0:
        return float(np.sqrt(np.mean(x.astype(np.float64) ** 2))) if x.size else 0.0
    fr = np.mean(x[:k * n].astype(np.float64).reshape(k, n) ** 2, axis=1)
    top = np.sort(fr)[k - max(1, k // 4):]
    return float(np.sqrt(np.mean(top)))


def tilt(x: np.ndarray, a: float) -> np.ndarray:
    """First-order spectral tilt y[n] = x[n] - a x[n-1], rescaled to the input RMS."""
    if x.size < 2 or a == 0.0:
        return x.astype(np.float64)
    y = x.astype(np.float64).copy()
    y[1:] -= a * x[:-1]
    r0, r1 = np.sqrt(np.mean(x.astype(np.float64) ** 2)), np.sqrt(np.mean(y ** 2))
    return y * (r0 / r1) if r1 > 0 else y


def room_ir(rate: int, rt60_s: float, rng: np.random.Generator) -> np.ndarray:
    """A simple synthetic room: direct path, then exponentially decaying noise (-60 dB at rt60_s)
    starting 2-10 ms later, with a direct-to-reverberant ratio of 0..10 dB."""
    n = max(2, int(rt60_s * rate))
    t = np.arange(n) / rate
    tail = rng.standard_normal(n) * 10 ** (-3.0 * t / rt60_s)
    gap = int(rng.uniform(0.002, 0.010) * rate)
    tail[:gap] = 0.0
    e = np.sqrt(np.sum(tail ** 2))
    drr_db = rng.uniform(0.0, 10.0)
    h = tail / (e if e > 0 else 1.0) * 10 ** (-drr_db / 20)
    h[0] = 1.0
    return h


def _convolve(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    n = x.shape[0] + h.shape[0] - 1
    m = 1 << int(np.ceil(np.log2(max(n, 2))))
    y = np.fft.irfft(np.fft.rfft(x, m) * np.fft.rfft(h, m), m)[:n]
    return y[:x.shape[0] + h.shape[0] // 4]   # keep the start of the tail


def _speed(x: np.ndarray, f: float) -> np.ndarray:
    if f == 1.0 or x.size < 2:
        return x.astype(np.float64)
    return np.interp(np.arange(0.0, x.size - 1, f), np.arange(x.size), x.astype(np.float64))


def augment(x: np.ndarray, rate: int, rng: np.random.Generator, recipe: Recipe,
            babble: Sequence[np.ndarray] = ()) -> np.ndarray:
    """One augmented copy of an utterance (float32 in [-1, 1], same rate).

    ``babble``: other utterances at ``rate`` (float) for babble noise."""
    return _augment(x, rate, rng, recipe, babble)[0]


def augment_in_stream(x: np.ndarray, rate: int, rng: np.random.Generator, recipe: Recipe,
                      babble: Sequence[np.ndarray] = (), history: Sequence[tuple] = ()) -> tuple[np.ndarray, int]:
    """:func:`augment`, and with probability ``recipe.history_prob`` another utterance before it:
    ``(audio, lead-in samples)``.  The lead-in (a clip of ``history``, ``[(audio, rate)]``, at
    ``history_level_db`` relative to the sample's speech level, then a gap of ``history_gap_s``, under
    the same background noise) is meant for the front end only (``trainset._encode_audio`` drops
    its steps): in a stream a word follows other speech, and PCEN's smoothed level still remembers
    it (time constant ``pcen_ms``), which an isolated training word never shows."""
    if not history or recipe.history_prob <= 0.0 or rng.random() >= recipe.history_prob:
        return _augment(x, rate, rng, recipe, babble)
    h, hr = history[int(rng.integers(len(history)))]
    h = np.asarray(h, np.float64)
    if hr != rate and h.size > 1:
        h = np.interp(np.arange(0.0, h.size - 1, hr / rate), np.arange(h.size), h)
    lead = (h, rng.uniform(*recipe.history_level_db), int(rng.uniform(*recipe.history_gap_s) * rate))
    return _augment(x, rate, rng, recipe, babble, lead)


def _augment(x: np.ndarray, rate: int, rng: np.random.Generator, recipe: Recipe,
             babble: Sequence[np.ndarray] = (), lead: Optional[tuple] = None) -> tuple[np.ndarray, int]:
    """:func:`augment` with an optional ``lead = (audio, level dB relative to the speech, gap samples)``
    put before the context: ``(audio, lead-in samples)``."""
    y = _speed(x, rng.uniform(*recipe.speed))
    y = tilt(y, rng.uniform(*recipe.tilt))
    if rng.random() < recipe.room_prob:
        y = _convolve(y, room_ir(rate, rng.uniform(*recipe.rt60_s), rng))
    level = 10 ** (rng.uniform(*recipe.level_dbfs) / 20)
    a = active_rms(y, rate)
    y = y * (level / a) if a > 0 else y
    pre = int(rng.uniform(*recipe.pre_ms) * rate / 1000)
    post = int(rng.uniform(*recipe.post_ms) * rate / 1000)
    y = np.concatenate([np.zeros(pre), y, np.zeros(post)])
    skip = 0
    if lead is not None:
        h, rel_db, gap = lead
        ha = active_rms(h, rate)
        h = h * (level * 10 ** (rel_db / 20) / ha) if ha > 0 else h
        skip = h.shape[0] + gap
        y = np.concatenate([h, np.zeros(gap), y])
    if rng.random() < recipe.noise_prob:
        snr = rng.uniform(*recipe.snr_db)
        if babble and rng.random() < recipe.babble_prob:
            nz = np.zeros(y.shape[0])
            for _ in range(int(rng.integers(3, 7))):
                b = babble[int(rng.integers(len(babble)))].astype(np.float64)
                b = b / (np.sqrt(np.mean(b ** 2)) + 1e-12)
                off = int(rng.integers(-b.shape[0] // 2, y.shape[0]))
                lo, hi = max(0, off), min(y.shape[0], off + b.shape[0])
                if hi > lo:
                    nz[lo:hi] += b[lo - off:hi - off]
            r = np.sqrt(np.mean(nz ** 2))
            nz = nz / r if r > 0 else _noise(rng, y.shape[0], "pink")
        else:
            nz = _noise(rng, y.shape[0], ("white", "pink", "brown")[int(rng.integers(3))])
        y = y + nz * (level / 10 ** (snr / 20))
    return np.clip(y, -1.0, 1.0).astype(np.float32), skip


# ---------------------------------------------------------------------------
# sampling

def balanced_pick(utts: Sequence[Utterance], recipe: Recipe, rng: np.random.Generator) -> list[Utterance]:
    """The utterances of one variant (with repeats), see the module docstring."""
    digits = [u for u in utts if u.known]
    words = [u for u in utts if not u.known]
    out: list[Utterance] = []
    by_spk = defaultdict(list)
    for u in digits:
        by_spk[(u.corpus, u.speaker)].append(u)
    for key in sorted(by_spk, key=lambda k: (str(k[0]), str(k[1]))):
        us = by_spk[key]
        cap = {"fsdd": recipe.fsdd_per_speaker, SYNTH_DIGITS: recipe.synth_per_voice}.get(key[0])
        if cap is not None:
            idx = rng.permutation(len(us))[:cap]
            out += [us[i] for i in sorted(idx)]
        else:
            out += us * recipe.rare_repeats
    hard = [u for u in words if u.corpus == "more-voices-words"]
    out += hard * recipe.hard_negative_repeats
    out += [u for u in words if u.corpus == SYNTH_WORDS]
    rest = [u for u in words if u.corpus not in ("more-voices-words", SYNTH_WORDS)]
    if rest and recipe.n_words:
        count = defaultdict(int)
        for u in rest:
            count[(u.corpus, u.speaker)] += 1
        w = np.array([1.0 / count[(u.corpus, u.speaker)] for u in rest])
        idx = rng.choice(len(rest), size=min(recipe.n_words, len(rest)), replace=False, p=w / w.sum())
        out += [rest[i] for i in sorted(idx)]
    return out


def synthetic_utterances(folder: str) -> list[Utterance]:
    """The synthetic voices of :mod:`spikewire.tools.synthvoices` under ``folder`` (``digits/`` and, if
    present, ``words/``): training material only, never part of a protocol fold's test side."""
    from spikewire.tools.datasets import digit_folder, word_folder

    us = digit_folder(Path(folder) / "digits", "synth:", SYNTH_DIGITS)
    if (Path(folder) / "words").is_dir():
        us += word_folder(Path(folder) / "words", "synth:", SYNTH_WORDS)
    return us


def fold_utterances(root: str, fold: str, seed: int = 0, fsdd_test_out: bool = True, synthetic: str = ""):
    """(train, test) utterances of protocol fold ``fold`` over every corpus under ``root``;
    with ``fsdd_test_out`` the FSDD test split is moved from train to test; ``synthetic``: a folder of
    :mod:`spikewire.tools.synthvoices`, added to the training side."""
    us = [u for c in CORPORA for u in load_corpus(c, root)]
    if fold == ALL_FOLD:  # the shipped model: every speaker (only --fsdd-test-out holds files back)
        train_u, test_u = list(us), []
    else:
        by_name = {f.name: f for f in folds(us, seed)}
        if fold not in by_name:
            raise ValueError(f"unknown fold {fold!r}; folds: {ALL_FOLD}, {', '.join(sorted(by_name))}")
        f = by_name[fold]
        train_u, test_u = list(f.train), list(f.test)
    if fsdd_test_out:
        test_u += [u for u in train_u if u.corpus == "fsdd" and u.split == "test"]
        train_u = [u for u in train_u if not (u.corpus == "fsdd" and u.split == "test")]
    if synthetic:
        train_u += synthetic_utterances(synthetic)
    return train_u, test_u


class VoicesData(Data):
    """train.Data with the many-voices training set; ``test`` = the fold's held-out digits
    (``all_test``: every held-out utterance)."""

    variant_dir, variant_name, variant_seed = "voices-v2", "voices", 2000

    def __init__(self, cfg: TrainConfig, fe: FrontEndConfig, recipe: Recipe, train_utts: Sequence[Utterance],
                 test_utts: Sequence[Utterance], vocabulary: Sequence[str] = DIGIT_WORDS):
        self.recipe = recipe
        self.all_test = list(test_utts)
        super().__init__(cfg, fe, vocabulary, split=(train_utts, [u for u in test_utts if u.known]))

    def _key_settings(self) -> list:
        return [dataclasses.asdict(self.recipe), self.cfg.seed, self.cfg.max_ms, self.cfg.n_noise]

    def _variant_audio(self, rng: np.random.Generator):
        """Speaker-balanced clips (:func:`balanced_pick`) and the espeak words, each augmented
        (:func:`augment`) with babble of 60 training words of the clip's rate."""
        picked = balanced_pick(self.train_utts, self.recipe, rng)
        audio: dict = {}

        def load(p: Path):
            if p not in audio:
                audio[p] = read_wav(p)
            return audio[p]

        word_pool = [u for u in self.train_utts if not u.known]
        bab = defaultdict(list)
        for i in rng.choice(len(word_pool), size=min(60, len(word_pool)), replace=False) if word_pool else []:
            x, r = load(word_pool[int(i)].path)
            bab[r].append(x)
        history: list = []  # speech before a sample (history_prob): training words and digits, any rate
        if self.recipe.history_prob > 0:
            hist_rng = np.random.default_rng([self.cfg.seed, 2100, int(rng.integers(2**31))])
            digit_pool = [u for u in self.train_utts if u.known]
            for pool in (word_pool, digit_pool):
                for i in hist_rng.choice(len(pool), size=min(60, len(pool)), replace=False) if pool else []:
                    history.append(load(pool[int(i)].path))
        for u in picked:
            x, r = load(u.path)
            y, skip = augment_in_stream(x, r, rng, self.recipe, bab.get(r, ()), history)
            yield y, r, self.label_of(u), skip
        for _, p in self.espeak:
            x, r = load(p)
            y, skip = augment_in_stream(x, r, rng, self.recipe, bab.get(r, ()), history)
            yield y, r, self.none, skip


def voices_config(out: str, **kw) -> TrainConfig:
    """train.TrainConfig with the many-voices front end (``kw`` overrides)."""
    fe = dict(VOICES_FRONTEND)
    fe.update(kw.pop("frontend", {}))
    return TrainConfig(out=out, frontend=fe, **kw)


def recipe_overrides(items: Sequence[str]) -> dict:
    """``FIELD=JSON`` strings -> Recipe keyword arguments (lists become tuples); ValueError names a bad one."""
    names = {f.name for f in dataclasses.fields(Recipe)}
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or k not in names:
            raise ValueError(f"--set {it!r}: expected FIELD=VALUE with FIELD one of {', '.join(sorted(names))}")
        try:
            val = json.loads(v)
        except json.JSONDecodeError as e:
            raise ValueError(f"--set {it!r}: VALUE is not JSON ({e})") from None
        out[k] = tuple(val) if isinstance(val, list) else val
    return out


def train_overrides(items: Sequence[str]) -> dict:
    """``FIELD=JSON`` strings -> TrainConfig keyword arguments (lists become tuples); ValueError names a bad
    one.  The fields main() sets from its own options are not accepted here."""
    own = {"out", "epochs", "float_epochs", "n_hid", "seed", "lr", "threads", "variants", "cache", "max_ms",
           "frontend", "espeak_per_word", "n_noise"}
    names = {f.name for f in dataclasses.fields(TrainConfig)} - own
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or k not in names:
            raise ValueError(f"--train {it!r}: expected FIELD=VALUE with FIELD one of {', '.join(sorted(names))}")
        try:
            val = json.loads(v)
        except json.JSONDecodeError as e:
            raise ValueError(f"--train {it!r}: VALUE is not JSON ({e})") from None
        out[k] = tuple(val) if isinstance(val, list) else val
    return out


def frontend_overrides(items: Sequence[str]) -> dict:
    """``FIELD=JSON`` strings -> FrontEndConfig overrides (ValueError names a bad one; step_ms is the
    TrainConfig's)."""
    names = {f.name for f in dataclasses.fields(FrontEndConfig)} - {"step_ms"}
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or k not in names:
            raise ValueError(f"--fe {it!r}: expected FIELD=VALUE with FIELD one of {', '.join(sorted(names))}")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError as e:
            raise ValueError(f"--fe {it!r}: VALUE is not JSON ({e})") from None
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m spikewire.tools.voices", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", required=True, help="folder holding the corpora (../shared/data)")
    p.add_argument("--fold", default="validation", help="protocol fold: validation or loso-SPEAKER, or 'all' (every speaker: the shipped model)")
    p.add_argument("--out", required=True)
    p.add_argument("--fsdd-test-out", action="store_true",
                   help="also keep the FSDD test split (index 0-4) out of training")
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--float-epochs", type=int, default=13)
    p.add_argument("--frontend", choices=("pcen", "log"), default="pcen",
                   help="pcen: VOICES_FRONTEND; log: train.py's front end (no normalisation, floor -65 dB)")
    p.add_argument("--n-hid", type=int, default=TrainConfig.n_hid)
    p.add_argument("--variants", type=int, default=8)
    p.add_argument("--lr", type=float, default=TrainConfig.lr, help="Adam learning rate in integer weight units")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: on a loaded 2-core machine 2 threads made a batch 4-5x slower)")
    p.add_argument("--n-words", type=int, default=Recipe.n_words)
    p.add_argument("--fsdd-per-speaker", type=int, default=Recipe.fsdd_per_speaker)
    p.add_argument("--rare-repeats", type=int, default=Recipe.rare_repeats)
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="any other Recipe field, VALUE as JSON (e.g. snr_db=[10,40], noise_prob=0.5); repeatable")
    p.add_argument("--synthetic", default="", metavar="DIR",
                   help="synthetic voices (python -m spikewire.tools.synthvoices --out DIR) as extra training speakers")
    p.add_argument("--train", action="append", default=[], metavar="FIELD=VALUE",
                   help="a TrainConfig field (e.g. rec_lr_scale=0.3), VALUE as JSON; repeatable")
    p.add_argument("--fe", action="append", default=[], metavar="FIELD=VALUE",
                   help="a FrontEndConfig field over the recipe's front end, VALUE as JSON (e.g. n_channels=32); "
                        "repeatable")
    p.add_argument("--max-ms", type=float, default=TrainConfig.max_ms, help="crop longer samples")
    p.add_argument("--name", default="kws-digits")
    p.add_argument("--cache", default="")
    p.add_argument("--resume", action="store_true")
    a = p.parse_args(argv)
    out = Path(a.out)
    try:
        cfg = voices_config(str(out), epochs=a.epochs, float_epochs=a.float_epochs, n_hid=a.n_hid, seed=a.seed,
                            lr=a.lr, threads=a.threads, variants=a.variants, cache=a.cache, espeak_per_word=5,
                            n_noise=100, max_ms=a.max_ms,
                            frontend={**(LOG_FRONTEND if a.frontend == "log" else {}), **frontend_overrides(a.fe)},
                            **train_overrides(a.train))
        recipe = Recipe(n_words=a.n_words, fsdd_per_speaker=a.fsdd_per_speaker, rare_repeats=a.rare_repeats,
                        **recipe_overrides(a.set))
        fe = frontend_config(cfg)
        tr, te = fold_utterances(a.root, a.fold, a.seed, a.fsdd_test_out, a.synthetic)
        data = VoicesData(cfg, fe, recipe, tr, te)
    except ValueError as e:
        print(f"python -m spikewire.tools.voices: error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    run_logging(out / "train.log")
    log.info("fold %s: %d train / %d test utterances; %d held-out digits", a.fold, len(tr), len(te), len(data.test))
    t0 = time.time()
    res = train(cfg, resume=a.resume, data=data, fe=fe)
    path = out / f"{a.name}.swm"
    if a.fold == ALL_FOLD:
        held = f"the FSDD test split ({len(data.test)} files; every speaker is also in training)"
    else:
        held = ("the fold's held-out digits" + (" and the FSDD test split" if a.fsdd_test_out else "")
                + f" ({len(data.test)} files, every digit corpus)")
    model = export_model(res, cfg, path, a.name, extra_metrics={"fold": a.fold, "recipe": dataclasses.asdict(recipe),
                                                               "fsdd_test_out": a.fsdd_test_out, "test_set": held,
                                                               "synthetic": a.synthetic})
    log.info("wrote %s in %.1f s total", path, time.time() - t0)
    log.info("metrics: %s", json.dumps(model.metrics, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
