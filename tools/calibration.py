"""Calibration: a sweep of one decision rule's parameters on a streaming run over the training
split, choosing the most net hits within a false-alarm (and unknown-word) budget (docs/evaluation.md).
Every point's keywords are the streaming Decider's (:func:`spikewire.decision.decide_offline_fast`)."""
from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Optional, Sequence

from spikewire.config import Chip
from spikewire.decision import DecisionConfig, decide_offline_fast, segments, select_segments
from spikewire.model import Model
from spikewire.progress import Progress

from .datasets import Utterance
from .errors import EvalError
from .offline import evaluate_files, offline_metrics, reclassify
from .scoring import TOLERANCE_S, evaluate_stream, merge_scores, score_stream
from .streams import GAP_S, NOISE_DB, NOISE_KIND

log = logging.getLogger(__name__)


MAX_FA_PER_HOUR = 2.0
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
          tolerance_s: float = TOLERANCE_S, rule: Optional[str] = None, progress: bool = False) -> list[dict]:
    """Score every point of the ``rule``'s ``grid`` (default: the model's rule and
    :data:`GRIDS`) on pre-computed CADC runs (``[(cadc, Stream)]``, from
    :func:`evaluate_stream` with ``keep_cadc``).  The other decision fields
    (``refractory_ms``, ``max_steps``, ``offline_reject``) stay the model's.
    The keywords of every point are exactly the streaming Decider's.  ``progress``: points done,
    rate and time left on stderr."""
    rule = rule or model.decision.rule
    if rule not in GRIDS:
        raise EvalError(f"unknown decision rule {rule!r}")
    g = _grid(rule, grid, model.decision)
    keys = list(g)
    step_ms = model.frontend.step_ms
    base = dataclasses.replace(model.decision, rule=rule)
    n_points = 1
    for values in g.values():
        n_points *= len(values)
    bar = Progress(n_points, f"calibration sweep ({rule} rule) points") if progress else None
    rows = _sweep(runs, model, g, keys, base, step_ms, tolerance_s, rule, bar)
    if bar is not None:
        bar.close()
    return rows


def _sweep(runs, model: Model, g: dict, keys: list, base: DecisionConfig, step_ms: float, tolerance_s: float,
           rule: str, bar: Optional[Progress]) -> list[dict]:
    """:func:`sweep`'s loop (``bar`` counts the points)."""
    rows = []
    if rule == "run":
        for th, mg, ms in itertools.product(g["threshold"], g["margin"], g["min_steps"]):
            cfg = dataclasses.replace(base, threshold=int(th), margin=int(mg), min_steps=int(ms))
            rows.append(_row(cfg, keys, [
                score_stream(decide_offline_fast(c, model.vocabulary, model.has_none_unit, cfg, step_ms),
                             s.segments, s.duration_s, tolerance_s) for c, s in runs]))
            if bar is not None:
                bar.update()
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
            if bar is not None:
                bar.update()
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
              max_false_accept: Optional[float] = None, progress: bool = False) -> tuple[Model, dict]:
    """Choose the parameters of the decision ``rule`` (default: the model's) on a
    streaming run over ``utterances`` (which must not contain test-split
    files).  Returns the calibrated copy of the model (its
    ``metrics["calibration"]`` holds the results) and the report.  ``progress``: bars for the
    stream, the sweep and the offline pass on stderr."""
    rule = rule or model.decision.rule
    if rule not in GRIDS:
        raise EvalError(f"unknown decision rule {rule!r}")
    g = _grid(rule, grid, model.decision)
    if any(u.split == "test" for u in utterances):
        raise EvalError("refusing to calibrate on test-split data: use --split train")
    if not any(u.split == "train" for u in utterances):
        log.warning("calibration data has no FSDD split information; make sure it is not your test set")
    ev = evaluate_stream(model, utterances, seed, repeat, noise, noise_db, gap_s, tolerance_s, chip=chip,
                         keep_cadc=True, progress=progress)
    runs = ev.pop("_cadc")
    rows = sweep(runs, model, grid, tolerance_s, rule, progress=progress)
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
        results, _ = evaluate_files(model, utterances, chip, progress=progress)
        report["offline_before"] = _brief(offline_metrics(results, model.vocabulary))
        report["offline_after"] = _brief(offline_metrics(reclassify(results, model, new_dec), model.vocabulary))
    top = sorted(rows, key=lambda r: (-(r["hit_rate"] or 0), r["false_alarms_per_hour"] or 0))[:10]
    report["top_by_hit_rate"] = top
    metrics = dict(model.metrics)
    metrics["calibration"] = {k: v for k, v in report.items() if k not in ("top_by_hit_rate",)}
    return dataclasses.replace(model, decision=new_dec, metrics=metrics), report


def _brief(m: dict) -> dict:
    return {k: m[k] for k in ("n", "accuracy", "rejected", "n_unknown", "false_accept_rate")}
