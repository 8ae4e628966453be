"""Scoring a stream's keywords against its utterance windows (hits, wrong words, misses, false
alarms per hour, unknown words accepted) and the streaming evaluation (:func:`evaluate_stream`)."""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Sequence

import numpy as np

from spikewire.config import Chip
from spikewire.decision import Keyword
from spikewire.model import Model

from .datasets import Utterance
from .errors import EvalError
from .streams import BLOCK_MS, GAP_S, NOISE_DB, NOISE_KIND, Segment, build_stream, run_stream

log = logging.getLogger(__name__)


TOLERANCE_S = 0.5  # a keyword may fire up to this long after the utterance ends


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
                    chip: Optional[Chip] = None, keep_cadc: bool = False, progress: bool = False) -> dict:
    """Run ``repeat`` streams (seeds ``seed .. seed + repeat - 1``) and score them
    (``progress``: a bar per stream on stderr).

    Returns the merged score plus ``runs`` (one score per stream) and, with
    ``keep_cadc``, ``_cadc`` (list of ``(cadc, Stream)``; not JSON).
    """
    if repeat < 1:
        raise EvalError(f"--repeat must be >= 1, got {repeat}")
    runs, kept, false_alarms = [], [], []
    for r in range(repeat):
        s = build_stream(utterances, seed + r, gap_s, noise, noise_db)
        kws, cadc = run_stream(model, s, block_ms, chip, progress=progress)
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
