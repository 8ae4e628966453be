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
import math
from typing import Optional

# the pieces, re-exported: ``spikewire.tools.evaluate`` stays the one import for all of them
from spikewire.decision import decide_offline_fast, segments, select_segments

from .calibration import (DEFAULT_GRID, GRIDS, MAX_FA_PER_HOUR, RUN_GRID, SEGMENT_GRID, calibrate,
                          choose_operating_point, sweep)
from .errors import EvalError
from .offline import (REJECTED, FileResult, classify_file, evaluate_files, evaluate_offline, leave_one_speaker_out,
                      offline_metrics, per_speaker_metrics, reclassify)
from .report import format_report, plot_offline
from .scoring import TOLERANCE_S, evaluate_stream, merge_scores, score_stream
from .selection import _chip_dict, find_utterances, make_chip, unknown_utterances
from .streams import (BLOCK_MS, GAP_S, NOISE_DB, NOISE_KIND, Segment, Stream, build_stream, make_noise, resample,
                      run_stream)

__all__ = [
    "EvalError", "FileResult", "Segment", "Stream",
    "find_utterances", "unknown_utterances", "make_chip",
    "classify_file", "evaluate_files", "offline_metrics", "reclassify", "per_speaker_metrics",
    "leave_one_speaker_out", "evaluate_offline",
    "make_noise", "build_stream", "run_stream", "decide_offline_fast", "score_stream", "merge_scores",
    "evaluate_stream",
    "RUN_GRID", "SEGMENT_GRID", "DEFAULT_GRID", "segments", "select_segments", "sweep", "choose_operating_point", "calibrate",
    "format_report", "plot_offline", "run",
    "GRIDS", "REJECTED", "TOLERANCE_S", "GAP_S", "NOISE_KIND", "NOISE_DB", "BLOCK_MS", "MAX_FA_PER_HOUR", "MISMATCH",
    "resample",
]
MISMATCH = 0.05  # default relative spread with --chip


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
                             max_false_accept=getattr(args, "max_false_accept", None), progress=True)
        new.save(args.out)
        rep["out"] = str(args.out)
        return {**base, **rep}
    if args.stream:
        rep = evaluate_stream(model, utts, args.seed, args.repeat, noise, noise_db, gap, tol,
                              opt("block_ms", BLOCK_MS), chip, progress=True)
        return {**base, "mode": "stream", **rep}
    rep, _, example = evaluate_offline(model, utts, chip, per_speaker=args.per_speaker,
                                       keep_example=bool(args.plot), progress=True)
    out = {**base, "mode": "offline", **rep, "decision": dataclasses.asdict(model.decision)}
    if args.plot:
        plot_offline(args.plot, out, example, model)
        out["plot"] = str(args.plot)
    return out
