"""Evaluation of spikewire keyword models on the bit-exact fixed-point core.

Three procedures (definitions in ``docs/evaluation.md``):

* **offline** (:func:`evaluate_offline`): every file is encoded with the
  model's own front end and run on a freshly reset core; the readout's CADC
  codes go through :func:`spikewire.decision.classify`.  Accuracy, per-class
  recall, a confusion matrix with a "rejected" column, and the false-accept
  rate on files whose word is not in the vocabulary.
* **streaming** (:func:`evaluate_stream`): the utterances are concatenated in
  a seeded random order with random gaps over background noise
  (:func:`build_stream`), fed through the streaming :class:`FrontEnd` in
  small blocks, the core block by block (never reset) and the
  :class:`Decider`; the keyword list is scored against the utterance windows
  (:func:`score_stream`): hit rate, wrong-word rate, false alarms per hour.
* **calibration** (:func:`calibrate`): a sweep of one decision rule's
  parameters on a streaming run over the *training* split, choosing the most
  net hits (hit rate minus wrong-word rate) with at most ``max_fa_per_hour``
  false alarms per hour (and optionally a bound on unknown words accepted).

Library code: nothing here prints; ``runtime/cli.py`` (``spikewire eval``)
prints what :func:`run` returns, formatted by :func:`format_report`.
matplotlib is imported only by :func:`plot_offline`.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence, Union

import numpy as np

from spikewire.audio import read_wav
from spikewire.config import Chip
from spikewire.decision import (DecisionConfig, Keyword, classify, decide_offline_fast,  # noqa: F401 (re-exported)
                                segments, select_segments)
from spikewire.frontend import FrontEnd, encode
from spikewire.model import Model

from .datasets import DatasetError, Utterance, select, wav_folder

log = logging.getLogger(__name__)

__all__ = [
    "EvalError", "FileResult", "Segment", "Stream",
    "find_utterances", "unknown_utterances", "make_chip",
    "classify_file", "evaluate_files", "offline_metrics", "reclassify", "per_speaker_metrics",
    "leave_one_speaker_out", "evaluate_offline",
    "make_noise", "build_stream", "run_stream", "decide_offline_fast", "score_stream", "merge_scores",
    "evaluate_stream",
    "RUN_GRID", "SEGMENT_GRID", "DEFAULT_GRID", "segments", "select_segments", "sweep", "choose_operating_point", "calibrate",
    "format_report", "plot_offline", "run",
]

REJECTED = "rejected"
#: Streaming defaults (documented in docs/evaluation.md).
GAP_S = (0.3, 2.0)
NOISE_KIND = "pink"
NOISE_DB = -50.0  # background noise RMS in dBFS (FSDD speech is about -20 dBFS RMS when active)
TOLERANCE_S = 0.5  # a keyword may fire up to this long after the utterance ends
BLOCK_MS = 10.0
MAX_FA_PER_HOUR = 2.0
MISMATCH = 0.05  # default relative spread with --chip
#: Calibration grids, per decision rule (``--thresholds`` etc. replace a row).
RUN_GRID = {
    "threshold": list(range(16, 249, 8)),
    "margin": [0, 4, 8, 16, 24, 32, 48],
    "min_steps": [1, 2, 3, 5, 8, 12, 20, 30, 40, 50, 65],
}
SEGMENT_GRID = {
    "threshold": [16, 24, 32, 40, 48, 56, 72, 96, 128],
    "hold_steps": [0, 3, 6, 12, 18, 25, 35],
    "peak": [32, 48, 64, 80, 96, 128, 160, 192],
    "margin": [0, 8, 16, 32],
    "min_steps": [1, 5, 10, 15, 20, 30],
}
GRIDS = {"run": RUN_GRID, "segment": SEGMENT_GRID}
DEFAULT_GRID = RUN_GRID  # (name kept for callers of the run-rule sweep)

PathLike = Union[str, Path]


class EvalError(ValueError):
    """Bad evaluation input: no data, an empty selection, calibration on test data..."""


# ---------------------------------------------------------------------------
# data


def find_utterances(data: PathLike, vocabulary: Sequence[str], split: str = "all",
                    speakers: Optional[Iterable[str]] = None) -> list[Utterance]:
    """The labelled WAV files of ``data`` (see :func:`spikewire.tools.datasets.wav_folder`).

    ``data`` may be an FSDD checkout (its ``recordings/`` folder is used) or
    any labelled WAV folder.  ``split`` follows the FSDD index convention for
    ``{label}_{speaker}_{index}.wav`` names; words outside ``vocabulary`` are
    kept with ``known=False``.
    """
    root = Path(data)
    if not root.is_dir():
        raise EvalError(f"data folder {str(root)!r} does not exist")
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    try:
        utts = wav_folder(folder, vocabulary)
    except DatasetError as e:
        raise EvalError(str(e)) from None
    if split != "all" and not any(u.split is not None for u in utts):
        raise EvalError(f"--split {split} needs FSDD-style file names {{label}}_{{speaker}}_{{index}}.wav "
                        f"(none in {str(folder)!r}); use --split all")
    try:
        utts = select(utts, split, speakers=list(speakers) if speakers else None)
    except ValueError as e:
        raise EvalError(str(e)) from None
    if not utts:
        raise EvalError(f"no utterances in {str(folder)!r} for split={split!r}"
                        + (f", speakers={sorted(speakers)}" if speakers else ""))
    return utts


def unknown_utterances(folders: Sequence[PathLike], vocabulary: Sequence[str]) -> list[Utterance]:
    """Every WAV of ``folders`` as an *unknown word* (``known=False``), whatever
    ``--split`` or ``--speaker`` select: words the model must reject (e.g. from
    ``python -m spikewire.tools.words``).  A file whose label is in the vocabulary is an
    error: it would be scored as a false accept when the model is right."""
    out: list[Utterance] = []
    for d in folders:
        root = Path(d)
        if not root.is_dir():
            raise EvalError(f"unknown-word folder {str(root)!r} does not exist")
        try:
            utts = wav_folder(root, vocabulary)
        except DatasetError as e:
            raise EvalError(str(e)) from None
        known = sorted({u.label for u in utts if u.known})
        if known:
            raise EvalError(f"unknown-word folder {str(root)!r} holds words of the vocabulary: {known}")
        out += [dataclasses.replace(u, split=None, speaker=None, index=None) for u in utts]
    return out


def make_chip(seed: Optional[int], spread: Optional[float]) -> Optional[Chip]:
    """A chip with the same relative spread for threshold, leak, decay and gain (None: ideal)."""
    if seed is None and not spread:
        return None
    s = 0.0 if spread is None else float(spread)
    return Chip(seed=int(seed or 0), threshold=s, leak=s, decay=s, gain=s)


def _chip_dict(chip: Optional[Chip]) -> Optional[dict]:
    return None if chip is None else dataclasses.asdict(chip)


# ---------------------------------------------------------------------------
# offline: one file at a time


@dataclass(frozen=True)
class FileResult:
    path: str
    label: str
    known: bool
    speaker: Optional[str]
    predicted: Optional[str]  # a vocabulary word, or None (rejected)
    scores: tuple  # per readout unit: max CADC code over the file

    @property
    def correct(self) -> bool:
        return self.known and self.predicted == self.label


def classify_file(model: Model, core, utt: Utterance, keep: bool = False):
    """Run one file on ``core`` (reset first). Returns ``(FileResult, (events, RunOutput) or None)``."""
    samples, rate = read_wav(utt.path)
    events = encode(samples, rate, model.frontend)
    core.reset()
    out = core.run(events)
    w, scores = classify(out.cadc, len(model.vocabulary), model.has_none_unit, model.decision)
    res = FileResult(str(utt.path), utt.label, utt.known, utt.speaker,
                     None if w is None else model.vocabulary[w], tuple(int(s) for s in scores))
    return res, ((events, out) if keep else None)


def evaluate_files(model: Model, utterances: Sequence[Utterance], chip: Optional[Chip] = None,
                   keep_first: bool = False):
    """Classify every utterance. Returns ``(results, example)``; ``example`` is
    ``(utterance, events, RunOutput)`` of the first file when ``keep_first``."""
    core = model.make_core(chip)
    results, example = [], None
    try:
        for i, u in enumerate(utterances):
            res, kept = classify_file(model, core, u, keep=keep_first and i == 0)
            if kept is not None:
                example = (u, *kept)
            results.append(res)
            if (i + 1) % 250 == 0:
                log.info("offline: %d/%d files", i + 1, len(utterances))
    finally:
        core.close()
    return results, example


def reclassify(results: Sequence[FileResult], model: Model, config: DecisionConfig) -> list[FileResult]:
    """The same files under another decision config (``classify`` only needs the per-unit maxima)."""
    out = []
    n = len(model.vocabulary)
    for r in results:
        # a one-row "run" whose codes are the maxima gives the same decision
        w, _ = classify(np.asarray([r.scores], np.uint8), n, model.has_none_unit, config)
        out.append(dataclasses.replace(r, predicted=None if w is None else model.vocabulary[w]))
    return out


def offline_metrics(results: Sequence[FileResult], vocabulary: Sequence[str]) -> dict:
    """Accuracy, per-class recall, confusion (rows: true word, columns: words + rejected), false accepts.

    Accuracy and recall are over known-word files (a rejected known word is an
    error); ``false_accept_rate`` is the fraction of unknown-word files that
    were given any word (None when there are none).
    """
    vocab = list(vocabulary)
    idx = {w: i for i, w in enumerate(vocab)}
    conf = np.zeros((len(vocab), len(vocab) + 1), np.int64)
    known = [r for r in results if r.known]
    for r in known:
        col = len(vocab) if r.predicted is None else idx[r.predicted]
        conf[idx[r.label], col] += 1
    n = len(known)
    correct = int(np.trace(conf[:, :len(vocab)]))
    rows = conf.sum(axis=1)
    recall = {w: (None if rows[i] == 0 else float(conf[i, i] / rows[i])) for i, w in enumerate(vocab)}
    unknown = [r for r in results if not r.known]
    n_fa = sum(r.predicted is not None for r in unknown)
    return {
        "n": n,
        "n_correct": correct,
        "accuracy": None if n == 0 else correct / n,
        "rejected": int(conf[:, -1].sum()),
        "rejection_rate": None if n == 0 else float(conf[:, -1].sum() / n),
        "per_class_recall": recall,
        "labels": vocab,
        "confusion_columns": vocab + [REJECTED],
        "confusion": conf.tolist(),
        "n_unknown": len(unknown),
        "n_false_accept": int(n_fa),
        "false_accept_rate": None if not unknown else n_fa / len(unknown),
    }


def per_speaker_metrics(results: Sequence[FileResult], vocabulary: Sequence[str]) -> dict:
    """{speaker: {"n", "accuracy", "false_accept_rate", ...}} for files whose speaker is known."""
    speakers = sorted({r.speaker for r in results if r.speaker is not None})
    out = {}
    for s in speakers:
        m = offline_metrics([r for r in results if r.speaker == s], vocabulary)
        out[s] = {k: m[k] for k in ("n", "n_correct", "accuracy", "rejected", "n_unknown", "false_accept_rate")}
    return out


def leave_one_speaker_out(utterances: Sequence[Utterance],
                          model_for_speaker: Union[Model, Callable[[str], Model]],
                          chip: Optional[Chip] = None) -> dict:
    """Per-speaker accuracy; with a callable, speaker ``s`` is scored on ``model_for_speaker(s)``
    (a model trained without ``s``: true leave-one-speaker-out).  With a plain
    :class:`Model` every speaker is scored on that one model (per-speaker
    breakdown only).  Returns ``{"per_speaker": {s: metrics}, "mean_accuracy",
    "min_accuracy", "worst_speaker"}``."""
    speakers = sorted({u.speaker for u in utterances if u.speaker is not None})
    if not speakers:
        raise EvalError("leave-one-speaker-out needs speaker names ({label}_{speaker}_{index}.wav)")
    per = {}
    for s in speakers:
        model = model_for_speaker(s) if callable(model_for_speaker) and not isinstance(model_for_speaker, Model) \
            else model_for_speaker
        res, _ = evaluate_files(model, select(utterances, speakers=[s]), chip)
        m = offline_metrics(res, model.vocabulary)
        per[s] = {k: m[k] for k in ("n", "n_correct", "accuracy", "rejected", "n_unknown", "false_accept_rate")}
    accs = {s: m["accuracy"] for s, m in per.items() if m["accuracy"] is not None}
    worst = min(accs, key=accs.get) if accs else None
    return {"per_speaker": per,
            "mean_accuracy": float(np.mean(list(accs.values()))) if accs else None,
            "min_accuracy": accs[worst] if worst else None,
            "worst_speaker": worst}


def evaluate_offline(model: Model, utterances: Sequence[Utterance], chip: Optional[Chip] = None,
                     per_speaker: bool = False, keep_example: bool = False) -> tuple[dict, list, object]:
    """Offline report dict, the per-file results, and the example run (or None)."""
    results, example = evaluate_files(model, utterances, chip, keep_first=keep_example)
    report = offline_metrics(results, model.vocabulary)
    if per_speaker:
        report["per_speaker"] = per_speaker_metrics(results, model.vocabulary)
    report["errors"] = [{"path": r.path, "label": r.label, "predicted": r.predicted}
                        for r in results if (r.known and not r.correct) or (not r.known and r.predicted)][:50]
    return report, results, example


# ---------------------------------------------------------------------------
# streaming: build a long recording, run it, score the keywords


@dataclass(frozen=True)
class Segment:
    """One utterance inside a stream (seconds of stream time)."""

    start_s: float
    end_s: float
    label: str
    known: bool
    path: str = ""


@dataclass
class Stream:
    samples: np.ndarray  # float32 mono in [-1, 1]
    rate: int
    segments: list  # [Segment], in time order
    seed: int
    noise: dict
    length_s: Optional[float] = None  # set when ``samples`` was dropped after the run

    @property
    def duration_s(self) -> float:
        return self.length_s if self.length_s is not None else len(self.samples) / self.rate


def make_noise(n: int, kind: str, level_db: Optional[float], rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of white or pink (1/f power) Gaussian noise with RMS ``level_db`` dBFS
    (0 dBFS = RMS 1.0); ``level_db=None`` or ``kind="none"`` gives silence."""
    if kind == "none" or level_db is None or n == 0:
        return np.zeros(n, np.float32)
    w = rng.standard_normal(n)
    if kind == "pink":
        spec = np.fft.rfft(w)
        f = np.arange(spec.shape[0], dtype=np.float64)
        f[0] = 1.0
        spec /= np.sqrt(f)
        spec[0] = 0.0
        w = np.fft.irfft(spec, n)
    elif kind != "white":
        raise EvalError(f"noise kind must be 'pink', 'white' or 'none', got {kind!r}")
    rms = float(np.sqrt(np.mean(w * w))) or 1.0
    return (w * (10.0 ** (level_db / 20.0) / rms)).astype(np.float32)


def resample(x: np.ndarray, rate: int, to: int, half_width: int = 16, beta: float = 8.0) -> np.ndarray:
    """Band-limited resampling of a clip (Kaiser-windowed sinc, cutoff 0.95 x the lower
    Nyquist frequency, ``half_width`` zero crossings each side): files at another rate
    join a stream without aliasing (linear interpolation folded 4-11 kHz of a 22 kHz
    clip into an 8 kHz stream)."""
    x = np.asarray(x, np.float64)
    if rate == to or x.size == 0:
        return x.astype(np.float32)
    n = int(round(x.size * to / rate))
    ratio = to / rate
    fc = 0.5 * min(1.0, ratio) * 0.95  # cycles per input sample
    w = int(np.ceil(half_width / min(1.0, ratio)))  # taps each side, in input samples
    out = np.empty(n, np.float64)
    k = np.arange(-w + 1, w + 1)
    for i0 in range(0, n, 4096):  # bounded memory for long files
        t = np.arange(i0, min(n, i0 + 4096)) / ratio
        base = np.floor(t).astype(np.int64)
        idx = base[:, None] + k[None, :]
        d = t[:, None] - idx
        win = np.i0(beta * np.sqrt(np.clip(1.0 - (d / w) ** 2, 0.0, None))) / np.i0(beta)  # Kaiser, at d
        h = 2 * fc * np.sinc(2 * fc * d) * win
        h[np.abs(d) >= w] = 0.0
        xi = np.where((idx >= 0) & (idx < x.size), x[np.clip(idx, 0, x.size - 1)], 0.0)
        out[i0:i0 + len(t)] = (h * xi).sum(axis=1)
    return out.astype(np.float32)


def build_stream(utterances: Sequence[Utterance], seed: int, gap_s: tuple = GAP_S, noise: str = NOISE_KIND,
                 noise_db: Optional[float] = NOISE_DB, rate: Optional[int] = None) -> Stream:
    """One long recording: silence gaps drawn uniformly from ``gap_s`` before
    every utterance and after the last, utterances in a random order, all over
    continuous background noise; everything from ``np.random.default_rng(seed)``.

    ``rate`` defaults to the most common sample rate of the files (the highest
    on a tie); files at another rate are resampled with :func:`resample`.  The
    sum is clipped to [-1, 1].
    """
    if not utterances:
        raise EvalError("no utterances to build a stream from")
    lo, hi = gap_s
    if not 0 <= lo <= hi:
        raise EvalError(f"gap range must satisfy 0 <= min <= max, got {gap_s}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(utterances))
    gaps = rng.uniform(lo, hi, len(utterances) + 1)
    audio = [read_wav(utterances[i].path) for i in order]
    if rate is None:
        rates, counts = np.unique([r for _, r in audio], return_counts=True)
        rate = int(rates[counts == counts.max()].max())
    clips = [(utterances[i], resample(x, r, rate)) for i, (x, r) in zip(order, audio)]
    gap_n = [int(round(g * rate)) for g in gaps]
    total = sum(gap_n) + sum(len(x) for _, x in clips)
    out = make_noise(total, noise, noise_db, rng)
    segments = []
    pos = 0
    for (u, x), g in zip(clips, gap_n):
        pos += g
        out[pos:pos + len(x)] += x
        segments.append(Segment(pos / rate, (pos + len(x)) / rate, u.label, u.known, str(u.path)))
        pos += len(x)
    np.clip(out, -1.0, 1.0, out=out)
    return Stream(out, int(rate), segments, int(seed),
                  {"kind": noise, "level_dbfs": noise_db, "gap_s": [float(lo), float(hi)]})


def run_stream(model: Model, stream: Stream, block_ms: float = BLOCK_MS, chip: Optional[Chip] = None,
               decision: Optional[DecisionConfig] = None) -> tuple[list[Keyword], np.ndarray]:
    """Stream the recording through FrontEnd -> core -> Decider in ``block_ms`` blocks
    (state carried over, never reset). Returns the keywords and the CADC codes [T x n_units]."""
    fe = FrontEnd(model.frontend, stream.rate)
    core = model.make_core(chip)
    dec = model.decider(decision)
    block = max(1, int(round(stream.rate * block_ms / 1000.0)))
    keywords: list[Keyword] = []
    cadc = []
    x = stream.samples
    try:
        core.reset()
        for i in range(0, len(x) + block, block):  # the last pass flushes the front end
            ev = fe.process(x[i:i + block]) if i < len(x) else fe.flush()
            if ev.n_steps == 0:
                continue
            out = core.run(ev)
            cadc.append(out.cadc)
            keywords.extend(dec.update(out.cadc))
        keywords.extend(dec.flush())
    finally:
        core.close()
    codes = np.concatenate(cadc) if cadc else np.zeros((0, len(model.labels)), np.uint8)
    return keywords, codes


def score_stream(keywords: Sequence[Keyword], segments: Sequence[Segment], duration_s: float,
                 tolerance_s: float = TOLERANCE_S) -> dict:
    """Score keywords against the utterance windows.

    Window of utterance i: ``[start_i, min(end_i + tolerance_s, start_{i+1}))``
    (windows never overlap).  A keyword belongs to the window holding its
    ``t_end``.  Known-word utterance: *hit* if its word fired in its window,
    *wrong word* if another word fired there (both can happen), *miss* if
    nothing fired there.  Unknown-word utterance: *false accept* if anything
    fired there.  Keywords in no window are *false alarms*; the per-hour rate
    is over the whole stream duration.
    """
    segs = sorted(segments, key=lambda s: s.start_s)
    fired, false_alarms = _assign(keywords, segs, tolerance_s)
    n_known = n_hit = n_wrong = n_miss = n_unknown = n_fa_unknown = n_extra = 0
    delays = []
    for s, ks in zip(segs, fired):
        if not s.known:
            n_unknown += 1
            n_fa_unknown += bool(ks)
            continue
        n_known += 1
        words = [k.word for k in ks]
        hit = s.label in words
        n_hit += hit
        n_wrong += any(w != s.label for w in words)
        n_miss += not ks
        n_extra += max(0, len(ks) - 1)
        if hit:
            delays.append(next(k.t_end for k in ks if k.word == s.label) - s.end_s)
    counts = {"n_utterances": n_known, "n_hits": n_hit, "n_wrong_word": n_wrong, "n_missed": n_miss,
              "n_extra_in_window": n_extra, "n_unknown": n_unknown, "n_false_accept": n_fa_unknown,
              "n_false_alarms": len(false_alarms), "n_keywords": len(keywords),
              "duration_s": float(duration_s), "tolerance_s": float(tolerance_s),
              "hit_delays_s": delays}
    return _rates(counts)


def _assign(keywords: Sequence[Keyword], segs: Sequence[Segment], tolerance_s: float):
    """(keywords per window, keywords in no window); ``segs`` sorted by start."""
    starts = np.array([s.start_s for s in segs], float)
    ends = np.array([s.end_s + tolerance_s for s in segs], float)
    if len(segs) > 1:
        ends[:-1] = np.minimum(ends[:-1], starts[1:])
    fired: list[list[Keyword]] = [[] for _ in segs]
    false_alarms = []
    for k in keywords:
        i = int(np.searchsorted(starts, k.t_end, side="right")) - 1
        if i >= 0 and k.t_end < ends[i]:
            fired[i].append(k)
        else:
            false_alarms.append(k)
    return fired, false_alarms


def _rates(c: dict) -> dict:
    out = {k: v for k, v in c.items() if k != "hit_delays_s"}
    n, hours = c["n_utterances"], c["duration_s"] / 3600.0
    out["audio_hours"] = hours
    out["hit_rate"] = None if n == 0 else c["n_hits"] / n
    out["wrong_word_rate"] = None if n == 0 else c["n_wrong_word"] / n
    out["miss_rate"] = None if n == 0 else c["n_missed"] / n
    out["false_alarms_per_hour"] = None if hours <= 0 else c["n_false_alarms"] / hours
    out["false_accept_rate"] = None if c["n_unknown"] == 0 else c["n_false_accept"] / c["n_unknown"]
    d = c.get("hit_delays_s") or []
    out["hit_delay_s_median"] = float(np.median(d)) if d else None
    out["hit_delays_s"] = list(d)
    return out


def merge_scores(scores: Sequence[dict]) -> dict:
    """Sum the counts (and durations) of several scored streams and recompute the rates."""
    keys = ("n_utterances", "n_hits", "n_wrong_word", "n_missed", "n_extra_in_window", "n_unknown",
            "n_false_accept", "n_false_alarms", "n_keywords", "duration_s")
    c = {k: sum(s[k] for s in scores) for k in keys}
    c["tolerance_s"] = scores[0]["tolerance_s"] if scores else TOLERANCE_S
    c["hit_delays_s"] = [d for s in scores for d in s.get("hit_delays_s", [])]
    return _rates(c)


def _public(score: dict) -> dict:
    out = dict(score)
    out.pop("hit_delays_s", None)
    return out


def evaluate_stream(model: Model, utterances: Sequence[Utterance], seed: int = 0, repeat: int = 1,
                    noise: str = NOISE_KIND, noise_db: Optional[float] = NOISE_DB, gap_s: tuple = GAP_S,
                    tolerance_s: float = TOLERANCE_S, block_ms: float = BLOCK_MS,
                    chip: Optional[Chip] = None, keep_cadc: bool = False) -> dict:
    """Run ``repeat`` streams (seeds ``seed .. seed + repeat - 1``) and score them.

    Returns the merged score plus ``runs`` (one score per stream) and, with
    ``keep_cadc``, ``_cadc`` (list of ``(cadc, Stream)``; not JSON).
    """
    if repeat < 1:
        raise EvalError(f"--repeat must be >= 1, got {repeat}")
    runs, kept, false_alarms = [], [], []
    for r in range(repeat):
        s = build_stream(utterances, seed + r, gap_s, noise, noise_db)
        kws, cadc = run_stream(model, s, block_ms, chip)
        sc = score_stream(kws, s.segments, s.duration_s, tolerance_s)
        sc["seed"] = seed + r
        runs.append(sc)
        fa = _assign(kws, sorted(s.segments, key=lambda g: g.start_s), tolerance_s)[1]
        false_alarms += [dict(k.to_dict(), seed=seed + r) for k in fa]
        if keep_cadc:  # the audio is not needed any more, its duration is
            kept.append((cadc, dataclasses.replace(s, samples=np.zeros(0, np.float32), length_s=s.duration_s)))
        log.info("stream %d/%d: %.1f min, hit %.3f, %d false alarms", r + 1, repeat, s.duration_s / 60,
                 sc["hit_rate"] or 0.0, sc["n_false_alarms"])
    out = _public(merge_scores(runs))
    out.update({"runs": [_public(x) for x in runs], "seed": seed, "repeat": repeat,
                "noise": {"kind": noise, "level_dbfs": noise_db}, "gap_s": list(gap_s), "block_ms": block_ms,
                "decision": dataclasses.asdict(model.decision), "false_alarm_keywords": false_alarms[:100]})
    if keep_cadc:
        out["_cadc"] = kept
    return out


# ---------------------------------------------------------------------------
# calibration


def _grid(rule: str, grid: Optional[dict], decision: DecisionConfig) -> dict:
    """The calibration grid of ``rule`` with ``grid``'s rows replacing the defaults; every
    value is checked against ``DecisionConfig`` here, before any audio is run."""
    base = GRIDS[rule]
    bad = set(grid or {}) - set(base)
    if bad:
        raise EvalError(f"the {rule} rule has no parameter(s) {sorted(bad)}; its grid is {sorted(base)}")
    g = dict(base, **(grid or {}))
    for k, values in g.items():
        if not values:
            raise EvalError(f"empty calibration grid for {k}")
        for v in values:
            try:
                dataclasses.replace(decision, rule=rule, **{k: v})
            except (ValueError, TypeError) as e:
                raise EvalError(f"calibration grid: {e}") from None
    return g


def _row(cfg: DecisionConfig, keys: Sequence[str], scores: Sequence[dict]) -> dict:
    m = merge_scores(scores)
    row = {k: getattr(cfg, k) for k in keys}
    row.update({k: m[k] for k in ("hit_rate", "wrong_word_rate", "false_alarms_per_hour", "n_false_alarms",
                                  "false_accept_rate", "hit_delay_s_median")})
    return row


def sweep(runs: Sequence[tuple], model: Model, grid: Optional[dict] = None,
          tolerance_s: float = TOLERANCE_S, rule: Optional[str] = None) -> list[dict]:
    """Score every point of the ``rule``'s ``grid`` (default: the model's rule and
    :data:`GRIDS`) on pre-computed CADC runs (``[(cadc, Stream)]``, from
    :func:`evaluate_stream` with ``keep_cadc``).  The other decision fields
    (``refractory_ms``, ``max_steps``, ``offline_reject``) stay the model's.
    The keywords of every point are exactly the streaming Decider's."""
    rule = rule or model.decision.rule
    if rule not in GRIDS:
        raise EvalError(f"unknown decision rule {rule!r}")
    g = _grid(rule, grid, model.decision)
    keys = list(g)
    step_ms = model.frontend.step_ms
    base = dataclasses.replace(model.decision, rule=rule)
    rows = []
    if rule == "run":
        for th, mg, ms in itertools.product(g["threshold"], g["margin"], g["min_steps"]):
            cfg = dataclasses.replace(base, threshold=int(th), margin=int(mg), min_steps=int(ms))
            rows.append(_row(cfg, keys, [
                score_stream(decide_offline_fast(c, model.vocabulary, model.has_none_unit, cfg, step_ms),
                             s.segments, s.duration_s, tolerance_s) for c, s in runs]))
        return rows
    # segment rule: the segments depend on (threshold, hold_steps) only; the rest filters them
    for th, hold in itertools.product(g["threshold"], g["hold_steps"]):
        segs = [segments(c, len(model.vocabulary), int(th), int(hold), base.max_steps) for c, _ in runs]
        for pk, mg, ms in itertools.product(g["peak"], g["margin"], g["min_steps"]):
            cfg = dataclasses.replace(base, threshold=int(th), hold_steps=int(hold), peak=int(pk),
                                      margin=int(mg), min_steps=int(ms))
            rows.append(_row(cfg, keys, [
                score_stream(select_segments(sg, model.vocabulary, cfg, step_ms), s.segments, s.duration_s,
                             tolerance_s) for sg, (_, s) in zip(segs, runs)]))
    return rows


def choose_operating_point(rows: Sequence[dict], max_fa_per_hour: float = MAX_FA_PER_HOUR,
                           max_false_accept: Optional[float] = None) -> tuple[dict, bool]:
    """Among the rows with at most ``max_fa_per_hour`` (and, if given, at most
    ``max_false_accept`` of the unknown words accepted), the one with the most *net*
    hits (hit rate minus wrong-word rate: a wrong word is as bad for a user as a
    missed one is good); ties: higher hit rate, fewer false alarms, fewer unknown
    words accepted, then the shorter latency (fewer ``min_steps`` and ``hold_steps``),
    then the more conservative point (higher threshold, peak and margin).  If no row
    meets the targets, the row with the fewest false alarms (then unknown-word
    accepts, then the highest hit rate).  Returns ``(row, met_targets)``.

    Unknown-word accepts are a constraint, not part of the objective, on purpose:
    on the training split the hit rate saturates near 100 %, so trading hits for
    fewer accepts looks free there and is not on new recordings (measured:
    docs/evaluation.md)."""
    if not rows:
        raise EvalError("empty calibration grid")
    z = lambda v: 0.0 if v is None else v  # noqa: E731
    if max_false_accept is not None and any(r.get("false_accept_rate") is None for r in rows):
        raise EvalError("a false-accept target needs unknown words in the calibration data (--unknown DIR)")
    ok = [r for r in rows if z(r["false_alarms_per_hour"]) <= max_fa_per_hour
          and (max_false_accept is None or r["false_accept_rate"] <= max_false_accept)]
    if ok:
        best = min(ok, key=lambda r: (z(r["wrong_word_rate"]) - z(r["hit_rate"]), -z(r["hit_rate"]),
                                      z(r["false_alarms_per_hour"]), z(r.get("false_accept_rate")),
                                      r["min_steps"], r.get("hold_steps", 0),
                                      -r["threshold"], -r.get("peak", 0), -r["margin"]))
        return best, True
    best = min(rows, key=lambda r: (z(r["false_alarms_per_hour"]), z(r.get("false_accept_rate")),
                                    -z(r["hit_rate"]), z(r["wrong_word_rate"])))
    return best, False


def calibrate(model: Model, utterances: Sequence[Utterance], seed: int = 0, repeat: int = 1,
              max_fa_per_hour: float = MAX_FA_PER_HOUR, grid: Optional[dict] = None,
              noise: str = NOISE_KIND, noise_db: Optional[float] = NOISE_DB, gap_s: tuple = GAP_S,
              tolerance_s: float = TOLERANCE_S, chip: Optional[Chip] = None,
              offline: bool = True, rule: Optional[str] = None,
              max_false_accept: Optional[float] = None) -> tuple[Model, dict]:
    """Choose the parameters of the decision ``rule`` (default: the model's) on a
    streaming run over ``utterances`` (which must not contain test-split
    files).  Returns the calibrated copy of the model (its
    ``metrics["calibration"]`` holds the results) and the report."""
    rule = rule or model.decision.rule
    if rule not in GRIDS:
        raise EvalError(f"unknown decision rule {rule!r}")
    g = _grid(rule, grid, model.decision)
    if any(u.split == "test" for u in utterances):
        raise EvalError("refusing to calibrate on test-split data: use --split train")
    if not any(u.split == "train" for u in utterances):
        log.warning("calibration data has no FSDD split information; make sure it is not your test set")
    ev = evaluate_stream(model, utterances, seed, repeat, noise, noise_db, gap_s, tolerance_s, chip=chip,
                         keep_cadc=True)
    runs = ev.pop("_cadc")
    rows = sweep(runs, model, grid, tolerance_s, rule)
    best, met = choose_operating_point(rows, max_fa_per_hour, max_false_accept)
    new_dec = dataclasses.replace(model.decision, rule=rule, **{k: best[k] for k in g})
    before = ev  # the real streaming run (Decider in blocks) with the model's own decision config
    report = {
        "mode": "calibrate",
        "model": model.name,
        "max_false_alarms_per_hour": max_fa_per_hour,
        "max_false_accept": max_false_accept,
        "met_target": met,
        "before": dict(dataclasses.asdict(model.decision), **{k: before[k] for k in (
            "hit_rate", "wrong_word_rate", "false_alarms_per_hour", "false_accept_rate")}),
        "chosen": dict(dataclasses.asdict(new_dec), **{k: best[k] for k in (
            "hit_rate", "wrong_word_rate", "false_alarms_per_hour", "false_accept_rate", "hit_delay_s_median")}),
        "data": {"n_utterances": ev["n_utterances"], "n_unknown": ev["n_unknown"],
                 "audio_hours": ev["audio_hours"], "seed": seed, "repeat": repeat,
                 "splits": sorted({u.split or "unknown" for u in utterances}),
                 "noise": {"kind": noise, "level_dbfs": noise_db}, "gap_s": list(gap_s),
                 "tolerance_s": tolerance_s},
        "rule": rule,
        "grid": {k: list(v) for k, v in g.items()},
        "n_points": len(rows),
    }
    if offline:
        results, _ = evaluate_files(model, utterances, chip)
        report["offline_before"] = _brief(offline_metrics(results, model.vocabulary))
        report["offline_after"] = _brief(offline_metrics(reclassify(results, model, new_dec), model.vocabulary))
    top = sorted(rows, key=lambda r: (-(r["hit_rate"] or 0), r["false_alarms_per_hour"] or 0))[:10]
    report["top_by_hit_rate"] = top
    metrics = dict(model.metrics)
    metrics["calibration"] = {k: v for k, v in report.items() if k not in ("top_by_hit_rate",)}
    return dataclasses.replace(model, decision=new_dec, metrics=metrics), report


def _brief(m: dict) -> dict:
    return {k: m[k] for k in ("n", "accuracy", "rejected", "n_unknown", "false_accept_rate")}


# ---------------------------------------------------------------------------
# reporting


def _pct(v) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def format_report(report: dict) -> str:
    """Human-readable text of a report returned by :func:`run`."""
    mode = report.get("mode")
    lines = [f"model: {report.get('model')}   data: {report.get('data_dir', '')}   "
             f"split: {report.get('split', '')}" + (f"   chip: {report['chip']}" if report.get("chip") else "")]
    if mode == "offline":
        lines.append(f"accuracy: {_pct(report['accuracy'])} ({report['n_correct']}/{report['n']} known-word files; "
                     f"{report['rejected']} rejected)")
        fa = report["false_accept_rate"]
        lines.append("unknown words falsely accepted: " + (
            "n/a (no unknown-word files)" if fa is None else
            f"{_pct(fa)} ({report['n_false_accept']}/{report['n_unknown']})"))
        lines.append("per-class recall:")
        for w, r in report["per_class_recall"].items():
            lines.append(f"  {w:>12s}  {_pct(r)}")
        cols = report["confusion_columns"]
        width = max(6, *(len(c) for c in cols)) + 1
        lines.append("confusion (rows: true word, columns: predicted):")
        lines.append(" " * 13 + "".join(f"{c[:width - 1]:>{width}s}" for c in cols))
        for w, row in zip(report["labels"], report["confusion"]):
            lines.append(f"  {w:>10s} " + "".join(f"{v:>{width}d}" for v in row))
        if report.get("per_speaker"):
            lines.append("per speaker:")
            for s, m in report["per_speaker"].items():
                lines.append(f"  {s:>12s}  {_pct(m['accuracy'])}  (n={m['n']})")
        if report.get("plot"):
            lines.append(f"plot: {report['plot']}")
    elif mode == "stream":
        lines.append(f"streams: {report['repeat']} (seeds {report['seed']}..{report['seed'] + report['repeat'] - 1}), "
                     f"{report['audio_hours'] * 60:.1f} min of audio, noise {report['noise']}")
        lines.append(f"hit rate: {_pct(report['hit_rate'])} ({report['n_hits']}/{report['n_utterances']})   "
                     f"wrong word: {_pct(report['wrong_word_rate'])} ({report['n_wrong_word']})   "
                     f"missed: {_pct(report['miss_rate'])} ({report['n_missed']})")
        fah = report["false_alarms_per_hour"]
        lines.append(f"false alarms: {report['n_false_alarms']} = "
                     f"{'n/a' if fah is None else f'{fah:.2f}'} per hour")
        if report["false_accept_rate"] is not None:
            lines.append(f"unknown words falsely accepted: {_pct(report['false_accept_rate'])} "
                         f"({report['n_false_accept']}/{report['n_unknown']})")
        if report.get("hit_delay_s_median") is not None:
            lines.append(f"median firing time after utterance end: {report['hit_delay_s_median'] * 1000:.0f} ms")
        lines.append(f"decision: {report['decision']}")
    elif mode == "calibrate":
        b, c = report["before"], report["chosen"]
        fmt = lambda r: (f"rule={r['rule']} " + " ".join(f"{k}={r[k]}" for k in GRIDS[r["rule"]])  # noqa: E731
                         + f": hit {_pct(r['hit_rate'])}, wrong {_pct(r['wrong_word_rate'])}, "
                         f"{r['false_alarms_per_hour']:.2f} FA/h"
                         + ("" if r.get("false_accept_rate") is None
                            else f", unknown words accepted {_pct(r['false_accept_rate'])}"))
        lines.append(f"calibration on {report['data']['audio_hours'] * 60:.1f} min of {report['data']['splits']} "
                     f"audio, target <= {report['max_false_alarms_per_hour']} FA/h"
                     + ("" if report.get("max_false_accept") is None
                        else f" and <= {_pct(report['max_false_accept'])} unknown words accepted")
                     + " "
                     f"({'met' if report['met_target'] else 'NOT met'}), {report['n_points']} points")
        lines.append("  before: " + fmt(b))
        lines.append("  chosen: " + fmt(c))
        if "offline_before" in report:
            lines.append(f"  offline accuracy on the same files: {_pct(report['offline_before']['accuracy'])} -> "
                         f"{_pct(report['offline_after']['accuracy'])}")
        if report.get("out"):
            lines.append(f"wrote {report['out']}")
    return "\n".join(lines)


def _import_pyplot():
    try:
        import matplotlib
    except ImportError:
        raise EvalError("--plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_offline(path: PathLike, report: dict, example, model: Model) -> None:
    """Confusion matrix + one file's raster (input events, hidden spikes, readout CADC) as an image."""
    plt = _import_pyplot()
    fig = plt.figure(figsize=(13, 7.5))
    gs = fig.add_gridspec(3, 2, width_ratios=[1, 1.4])
    ax = fig.add_subplot(gs[:, 0])
    conf = np.asarray(report["confusion"], float)
    norm = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i in range(conf.shape[0]):
        for j in range(conf.shape[1]):
            if conf[i, j]:
                ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(conf.shape[1]), report["confusion_columns"], rotation=60, fontsize=8)
    ax.set_yticks(range(conf.shape[0]), report["labels"], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true word")
    ax.set_title(f"{report['model']}: accuracy {_pct(report['accuracy'])} (n={report['n']})")
    if example is not None:
        utt, events, out = example
        step_ms = model.frontend.step_ms
        steps = np.repeat(np.arange(events.n_steps), np.diff(events.indptr)) * step_ms
        a1 = fig.add_subplot(gs[0, 1])
        a1.scatter(steps, events.channels, s=1, c="k", marker="|")
        a1.set_ylabel("input channel")
        a1.set_title(f"{Path(utt.path).name} (label {utt.label})", fontsize=9)
        a2 = fig.add_subplot(gs[1, 1], sharex=a1)
        t, j = np.nonzero(out.spikes)
        a2.scatter(t * step_ms, j, s=1, c="tab:red", marker="|")
        a2.set_ylabel("hidden neuron")
        a3 = fig.add_subplot(gs[2, 1], sharex=a1)
        tt = np.arange(out.cadc.shape[0]) * step_ms
        for k, name in enumerate(model.labels):
            none = k >= len(model.vocabulary)  # matplotlib hides legend labels starting with "_"
            a3.plot(tt, out.cadc[:, k], lw=1, label="none unit" if none else name, ls="--" if none else "-")
        a3.axhline(model.decision.threshold, color="gray", lw=0.8, ls=":")
        a3.set_ylabel("readout CADC")
        a3.set_xlabel("time (ms)")
        a3.legend(fontsize=6, ncol=2, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------
# the `spikewire eval` entry point (cli.py prints the result)


def _parse_noise_db(v) -> Optional[float]:
    if v is None or (isinstance(v, str) and v.lower() in ("off", "none")):
        return None
    try:
        x = float(v)
    except ValueError:
        raise EvalError(f"--noise-db must be a number (dBFS) or 'off', got {v!r}") from None
    if not math.isfinite(x) or x > 0:
        raise EvalError(f"--noise-db must be a finite level <= 0 dBFS, got {v!r}")
    return x


def run(args) -> dict:
    """Execute ``spikewire eval`` from its parsed arguments; returns the JSON-able report."""
    from spikewire.model import load, resolve

    if args.plot and (args.stream or args.calibrate):
        raise EvalError("--plot is for the offline evaluation (without --stream/--calibrate)")
    model_path = resolve(args.model)
    model = load(model_path)
    spread = args.mismatch if args.mismatch is not None else (MISMATCH if args.chip is not None else None)
    chip = make_chip(args.chip, spread)
    speakers = args.speaker or None
    utts = find_utterances(args.data, model.vocabulary, args.split, speakers)
    unknown_dirs = [str(d) for d in (getattr(args, "unknown", None) or [])]
    utts += unknown_utterances(unknown_dirs, model.vocabulary)
    base = {"model": model.name, "model_path": str(model_path), "data_dir": str(args.data), "split": args.split,
            "speakers": speakers, "unknown_dirs": unknown_dirs, "chip": _chip_dict(chip), "n_files": len(utts)}
    opt = lambda name, default: default if getattr(args, name, None) is None else getattr(args, name)  # noqa: E731
    noise = opt("noise", NOISE_KIND)
    noise_db = _parse_noise_db(opt("noise_db", NOISE_DB))
    gap = tuple(opt("gap", GAP_S))
    tol = opt("tolerance", TOLERANCE_S)
    only_calibrate = {"out": "--out", "rule": "--rule", "max_fa_per_hour": "--max-fa-per-hour",
                      "max_false_accept": "--max-false-accept", "thresholds": "--thresholds", "margins": "--margins",
                      "min_steps": "--min-steps", "peaks": "--peaks", "hold_steps": "--hold-steps"}
    if not args.calibrate:
        given = [flag for name, flag in only_calibrate.items() if getattr(args, name, None) is not None]
        if given:
            raise EvalError(f"{', '.join(given)} only apply to --calibrate")
    mfa = getattr(args, "max_false_accept", None)
    if mfa is not None and not 0.0 <= mfa <= 1.0:
        raise EvalError(f"--max-false-accept is a fraction in 0..1, got {mfa}")
    if args.calibrate:
        if not args.out:
            raise EvalError("--calibrate needs --out PATH for the calibrated model")
        if args.split == "test":
            raise EvalError("refusing to calibrate on the test split: use --split train")
        grid = {}
        for key, val in (("threshold", args.thresholds), ("margin", args.margins), ("min_steps", args.min_steps),
                         ("peak", getattr(args, "peaks", None)), ("hold_steps", getattr(args, "hold_steps", None))):
            if val:
                try:
                    grid[key] = [int(v) for v in val.split(",")]
                except ValueError:
                    raise EvalError(f"calibration grid for {key} must be comma-separated integers, got {val!r}") from None
        new, rep = calibrate(model, utts, args.seed, args.repeat, opt("max_fa_per_hour", MAX_FA_PER_HOUR), grid,
                             noise, noise_db, gap, tol, chip, rule=getattr(args, "rule", None),
                             max_false_accept=getattr(args, "max_false_accept", None))
        new.save(args.out)
        rep["out"] = str(args.out)
        return {**base, **rep}
    if args.stream:
        rep = evaluate_stream(model, utts, args.seed, args.repeat, noise, noise_db, gap, tol,
                              opt("block_ms", BLOCK_MS), chip)
        return {**base, "mode": "stream", **rep}
    rep, _, example = evaluate_offline(model, utts, chip, per_speaker=args.per_speaker,
                                       keep_example=bool(args.plot))
    out = {**base, "mode": "offline", **rep, "decision": dataclasses.asdict(model.decision)}
    if args.plot:
        plot_offline(args.plot, out, example, model)
        out["plot"] = str(args.plot)
    return out
