"""Offline evaluation: every file on a freshly reset core, decided by
:func:`spikewire.decision.classify`; accuracy, recall, confusion, false accepts (docs/evaluation.md)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np

from spikewire.audio import read_wav
from spikewire.config import Chip
from spikewire.decision import DecisionConfig, classify, classify_scores
from spikewire.frontend import encode
from spikewire.model import Model
from spikewire.progress import Progress

from .datasets import Utterance, select
from .errors import EvalError



REJECTED = "rejected"


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
                   keep_first: bool = False, progress: bool = False):
    """Classify every utterance. Returns ``(results, example)``; ``example`` is
    ``(utterance, events, RunOutput)`` of the first file when ``keep_first``.
    ``progress``: files done, rate and time left on stderr."""
    core = model.make_core(chip)
    results, example = [], None
    bar = Progress(len(utterances), "offline files") if progress else None
    try:
        for i, u in enumerate(utterances):
            res, kept = classify_file(model, core, u, keep=keep_first and i == 0)
            if kept is not None:
                example = (u, *kept)
            results.append(res)
            if bar is not None:
                bar.update()
    finally:
        core.close()
        if bar is not None:
            bar.close()
    return results, example


def reclassify(results: Sequence[FileResult], model: Model, config: DecisionConfig) -> list[FileResult]:
    """The same files under another decision config (``classify`` only needs the per-unit maxima)."""
    if not results:
        return []
    words = classify_scores(np.asarray([r.scores for r in results], np.uint8), len(model.vocabulary),
                            model.has_none_unit, config.threshold, config.offline_reject)
    return [dataclasses.replace(r, predicted=None if w < 0 else model.vocabulary[w]) for r, w in zip(results, words)]


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
                     per_speaker: bool = False, keep_example: bool = False,
                     progress: bool = False) -> tuple[dict, list, object]:
    """Offline report dict, the per-file results, and the example run (or None)."""
    results, example = evaluate_files(model, utterances, chip, keep_first=keep_example, progress=progress)
    report = offline_metrics(results, model.vocabulary)
    if per_speaker:
        report["per_speaker"] = per_speaker_metrics(results, model.vocabulary)
    report["errors"] = [{"path": r.path, "label": r.label, "predicted": r.predicted}
                        for r in results if (r.known and not r.correct) or (not r.known and r.predicted)][:50]
    return report, results, example
