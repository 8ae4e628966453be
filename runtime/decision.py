"""Keyword decisions from the readout's 8-bit CADC codes.

Two streaming rules (``Decider``), chosen by ``DecisionConfig.rule``; both see
the CADC vector c(t) of every time step, one unit per word plus, optionally,
the "no keyword" unit.

``rule="segment"`` (default; classify each stretch of evidence, like a file):

* a step is *active* when the best *word* unit's code is >= ``threshold``;
* a *segment* opens at an active step and stays open through gaps of at most
  ``hold_steps`` inactive steps; it closes (is *decided*) at the first step
  that is ``hold_steps + 1`` steps past its last active step, or at the step
  where it is ``max_steps`` long (a bound on latency), or when the stream has
  a gap or ends (``flush``);
* its evidence is every unit's maximum code from its first step to the
  decision step, the hold time included (the "no keyword" unit often peaks
  just after an unknown word's brief word-unit lead).  It fires the word
  ``w`` with the highest maximum (ties: the first in the vocabulary) when
  ``max_w >= peak``, ``max_w - max_other >= margin`` (every other unit, the
  "no keyword" unit included), the segment spans at least ``min_steps`` steps
  (first to last active step) and the last keyword is more than
  ``refractory_ms`` before the decision step;
* ``t_start`` is the segment's first step, ``t_end`` the decision step;
  ``score`` is ``max_w / 255``.

This is the offline rule (``classify``) applied to every segment, so a model
trained to win on the maximum over a word decides the same way in a stream.
It answers ``hold_steps`` after the evidence ends, so keywords come a little
after the word (about 0.2 s with the shipped model).

``rule="run"`` (answers during the word):

* ``best``  = the word unit with the highest code;
  ``other`` = the highest code of every other unit (other words and the
  "no keyword" unit);
* the step is *evidence for* ``best`` when ``c_best >= threshold`` and
  ``c_best - other >= margin``;
* a keyword fires (once per run) at the first step where the same word has been
  evidenced for at least ``min_steps`` consecutive steps and the last keyword
  is more than ``refractory_ms`` ago (a run that matures inside the refractory
  window fires as soon as the window ends, if its evidence lasts).
  ``t_start`` is the first step of that run, ``t_end`` the step it fired at
  (so ``t_end - t_start`` is the decision latency past the onset of evidence);
  ``score`` is ``c_best / 255`` at firing.  ``peak``, ``hold_steps`` and
  ``max_steps`` are not used.

Offline rule (``classify``) for whole files: each unit's score is its maximum
code over the file; the prediction is the best word, or ``None`` (rejected)
when the "no keyword" unit's maximum exceeds it (``offline_reject``) or the
best word never reaches ``threshold``.

All are deterministic integer comparisons on uint8 codes.

For a whole recorded stream, :func:`decide_offline_fast` gives exactly the
keywords of one ``Decider`` fed the codes and flushed, much faster: the segment
rule vectorised (:func:`segments` cuts the stream once per ``threshold`` and
``hold_steps``, :func:`select_segments` applies the rest), the run rule by
feeding the Decider only the stretches that can be evidence.  Calibration
sweeps (``spikewire eval --calibrate``) score thousands of configs with it;
tests/test_decision_fast.py checks it against the streaming Decider.
"""
from __future__ import annotations

import dataclasses
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, NamedTuple, Sequence

import numpy as np


@dataclass(frozen=True)
class DecisionConfig:
    """Parameters of the keyword decision (this module's docstring describes both rules).

    Evidence is the readout's 8-bit CADC code (what BSS-2 gives you), one
    readout unit per vocabulary word plus, optionally, a "no keyword" unit.
    Step counts are in the model's time steps (``frontend.step_ms``).
    """

    threshold: int = 160  # segment: a step is active when the best word reaches it; run: evidence level
    margin: int = 8  # the word must exceed every other unit (incl. the none unit) by
    min_steps: int = 3  # segment: shortest segment (first to last active step); run: steps of evidence
    refractory_ms: int = 400  # no second keyword within this time
    offline_reject: bool = True  # file classification: reject when the none unit wins
    rule: str = "segment"  # "segment" (decide each stretch of evidence) or "run" (fire during the word)
    peak: int = 160  # segment: the winning word's maximum code must reach this
    hold_steps: int = 25  # segment: inactive steps a segment bridges before it is decided
    max_steps: int = 375  # segment: decide a segment at this length at the latest

    def __post_init__(self) -> None:
        for name, lo, hi in (("threshold", 0, 255), ("margin", 0, 255), ("min_steps", 1, 10000),
                             ("refractory_ms", 0, 60000), ("peak", 0, 255), ("hold_steps", 0, 10000),
                             ("max_steps", 1, 100000)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ValueError(f"decision {name} must be an int in {lo}..{hi}, got {v!r}")
        if not isinstance(self.offline_reject, bool):
            raise ValueError(f"decision offline_reject must be true or false, got {self.offline_reject!r}")
        if self.rule not in ("segment", "run"):
            raise ValueError(f"decision rule must be 'segment' or 'run', got {self.rule!r}")
        if self.rule == "segment" and self.min_steps > self.max_steps:
            raise ValueError(f"decision min_steps={self.min_steps} > max_steps={self.max_steps}: "
                             "no segment could ever fire")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DecisionConfig":
        """From a model file's ``decision`` object.  Files written before the
        segment rule existed have no ``rule`` key and meant the run rule."""
        known = {f.name for f in dataclasses.fields(cls)}
        bad = set(d) - known
        if bad:
            raise ValueError(f"unknown decision keys: {sorted(bad)}")
        return cls(**{"rule": "run", **d})


@dataclass(frozen=True)
class Keyword:
    word: str
    score: float  # 0..1 (CADC code / 255 at firing)
    t_start: float  # seconds of stream time (since the decider's step 0)
    t_end: float
    step: int  # absolute step index at firing
    stretch: int | None = field(default=None, compare=False)  # the id of its stretch (streaming Decider)

    def to_dict(self) -> dict:
        d = {"word": self.word, "score": round(self.score, 4), "t_start": round(self.t_start, 4),
             "t_end": round(self.t_end, 4)}
        if self.stretch is not None:
            d["stretch"] = self.stretch
        return d


#: Why a stretch fired no keyword: shorter than ``min_steps``, its best word below ``peak``, not
#: ``margin`` above every other unit, or within ``refractory_ms`` of the last keyword.
REJECT_REASONS = ("short", "peak", "margin", "refractory")


class DecidedStretch(NamedTuple):
    """A stretch of evidence the decision saw: stream steps ``start..end`` (inclusive), ``unit`` the word
    with the most evidence and ``code`` its highest CADC code; ``fired``, or why not (``reason``)."""

    id: int
    start: int
    end: int
    unit: int
    fired: bool
    code: int
    reason: str | None = None


#: blocks of at most this many steps are decided on Python ints, longer ones with numpy first
_SMALL_BLOCK = 32


class Decider:
    """Streaming keyword decisions; feed it CADC blocks in time order, and call
    :meth:`flush` at the end of the stream.

    Every stretch of evidence it decides, fired or rejected, is also recorded as a
    :class:`DecidedStretch` with an **id** drawn from ``ids`` (an iterator of ints; pass one
    shared by every Decider of a session and the ids stay unique across model reloads):
    :meth:`take_stretches` hands out those since the last call (the newest ``MAX_STRETCHES``),
    so a label arriving later can name one (on-line learning), and every :class:`Keyword` carries
    the id of its stretch (``stretch``).  The segment rule records every closed segment (its id is
    drawn when it is decided), the run rule every run of evidence at least ``min_steps`` long
    (its id is drawn when it is that long, so the keyword it fires carries it; the stretch is
    recorded when the run ends and is the whole run).
    """

    MAX_STRETCHES = 256

    def __init__(self, vocabulary: list[str], has_none_unit: bool, config: DecisionConfig,
                 step_ms: float = 1.0, ids: Iterator[int] | None = None):
        if step_ms <= 0:
            raise ValueError(f"step_ms must be > 0, got {step_ms}")
        self.ids = ids if ids is not None else itertools.count()
        self.vocabulary = list(vocabulary)
        self.n_words = len(self.vocabulary)
        self.n_units = self.n_words + (1 if has_none_unit else 0)
        self.config = config
        self.step_s = step_ms / 1000.0
        self._refr_steps = int(round(config.refractory_ms / step_ms))
        self.reset()

    def reset(self) -> None:
        self._run_word = -1
        self._run_start = 0
        self._run_len = 0
        self._run_fired = False
        self._run_noted = False  # this run's stretch is recorded
        self._run_id = None  # this run's stretch id (drawn when it is min_steps long)
        self._run_code = 0  # its best code so far
        self._seg_start = -1  # segment rule: first step of the open segment (-1: none open)
        self._seg_last = 0  # ... its last active step
        self._seg_max = None  # per-unit max codes since the segment's first step
        self._last_fire = None  # step of the last keyword
        self._next_step = 0
        self._stretches: deque = deque(maxlen=self.MAX_STRETCHES)

    @property
    def has_stretches(self) -> bool:
        """Whether :meth:`take_stretches` has any to hand out."""
        return bool(self._stretches)

    def take_stretches(self) -> list[DecidedStretch]:
        """The stretches decided since the last call, oldest first."""
        out = list(self._stretches)
        self._stretches.clear()
        return out

    def update(self, cadc: np.ndarray, t0: int | None = None) -> list[Keyword]:
        """Process a [T x n_units] uint8 block whose first row is step ``t0``
        (default: right after the previous block).  A block that starts after
        the previous one ended (dropped or paused steps) breaks evidence: a run
        restarts, an open segment is decided with what it saw."""
        c = np.asarray(cadc)
        if c.ndim != 2 or c.shape[1] != self.n_units:
            raise ValueError(f"cadc must be [T x {self.n_units}], got shape {c.shape}")
        if c.dtype != np.uint8:
            raise TypeError(f"cadc must be uint8 codes, got {c.dtype}")
        t0 = self._next_step if t0 is None else int(t0)
        if t0 < self._next_step:
            raise ValueError(f"block starts at step {t0}, before the end of the previous one ({self._next_step})")
        out: list[Keyword] = []
        if t0 > self._next_step:  # a gap: evidence does not span it
            self._note_run(self._next_step - 1)
            self._run_word, self._run_len = -1, 0
            out += self.flush()
        self._next_step = t0 + c.shape[0]
        if c.shape[0] == 0:
            return out
        if self.config.rule == "segment":
            return out + self._update_segment(c, t0)
        return out + self._update_run(c, t0)

    def flush(self) -> list[Keyword]:
        """End of stream: decide an open segment now (the ``segment`` rule; the
        ``run`` rule has no keyword pending, only the open run's stretch)."""
        self._note_run(self._next_step - 1)
        if self._seg_start < 0:
            return []
        return self._close(self._next_step - 1)

    # -- segment rule --------------------------------------------------------------
    def _update_segment(self, c: np.ndarray, t0: int) -> list[Keyword]:
        # Python ints row by row: a runtime block is 2-3 steps, where numpy's per-call cost is most
        # of the work; long blocks find their active rows with numpy first and read rows lazily.
        cfg = self.config
        nw, thr, hold, max_steps = self.n_words, cfg.threshold, cfg.hold_steps, cfg.max_steps
        n = c.shape[0]
        if n <= _SMALL_BLOCK:
            rows = c.tolist()
            active = [max(r[:nw]) >= thr for r in rows]
        else:
            rows = None
            active = (c[:, :nw].max(axis=1) >= thr).tolist()
        out: list[Keyword] = []
        for i in range(n):
            if self._seg_start < 0:
                if not active[i]:
                    continue
                self._seg_start = self._seg_last = t0 + i
                self._seg_max = rows[i][:] if rows is not None else c[i].tolist()
            else:
                if active[i]:
                    self._seg_last = t0 + i
                row = rows[i] if rows is not None else c[i].tolist()
                self._seg_max = [a if a >= b else b for a, b in zip(self._seg_max, row)]
            step = t0 + i
            if step - self._seg_last > hold or step - self._seg_start + 1 >= max_steps:
                out += self._close(step)
        return out

    def _close(self, step: int) -> list[Keyword]:
        """Decide the open segment at ``step`` and close it."""
        cfg = self.config
        m = self._seg_max  # per-unit max codes (ints)
        start, span = self._seg_start, self._seg_last - self._seg_start + 1
        self._seg_start, self._seg_max = -1, None
        words = m[:self.n_words]
        w = words.index(max(words))  # the first maximum, as argmax
        other = max(m[:w] + m[w + 1:]) if self.n_units > 1 else -1
        sid = next(self.ids)
        reason = ("short" if span < cfg.min_steps else "peak" if m[w] < cfg.peak
                  else "margin" if m[w] - other < cfg.margin
                  else "refractory" if self._last_fire is not None and step - self._last_fire <= self._refr_steps
                  else None)
        self._stretches.append(DecidedStretch(sid, start, step, w, reason is None, int(m[w]), reason))
        if reason is not None:
            return []
        self._last_fire = step
        return [Keyword(self.vocabulary[w], float(m[w]) / 255.0, start * self.step_s, step * self.step_s, step,
                        stretch=sid)]

    # -- run rule ------------------------------------------------------------------
    def _note_run(self, last: int) -> None:
        """Record the current run as a stretch (once), ending at step ``last``, if it was long
        enough to fire (fired, or held back by the refractory time)."""
        if self._run_word >= 0 and self._run_len >= self.config.min_steps and not self._run_noted:
            self._stretches.append(DecidedStretch(self._run_id, self._run_start, last, self._run_word,
                                                  self._run_fired, self._run_code,
                                                  None if self._run_fired else "refractory"))
            self._run_noted = True

    def _run_evidence(self, c: np.ndarray) -> tuple[list, list, list]:
        """Per row: the best word, its code, and whether the row is evidence for it (the code
        reaches the threshold and beats every other unit by the margin)."""
        cfg = self.config
        nw, thr, mg = self.n_words, cfg.threshold, cfg.margin
        if c.shape[0] <= _SMALL_BLOCK:  # Python ints (see _update_segment)
            best, c_best, evid = [], [], []
            for r in c.tolist():
                words = r[:nw]
                cb = max(words)
                w = words.index(cb)
                other = max(r[:w] + r[w + 1:]) if self.n_units > 1 else -1
                best.append(w)
                c_best.append(cb)
                evid.append(cb >= thr and cb - other >= mg)
            return best, c_best, evid
        ci = c.astype(np.int16)
        words = ci[:, :nw]
        best = words.argmax(axis=1)
        c_best = words[np.arange(len(best)), best]
        masked = ci.copy()
        masked[np.arange(len(best)), best] = -1
        other = masked.max(axis=1) if self.n_units > 1 else np.full(len(best), -1, np.int16)
        evid = (c_best >= thr) & (c_best - other >= mg)
        return best.tolist(), c_best.tolist(), evid.tolist()

    def _update_run(self, c: np.ndarray, t0: int) -> list[Keyword]:
        cfg = self.config
        best, c_best, evid = self._run_evidence(c)
        out: list[Keyword] = []
        for i in range(c.shape[0]):
            if not evid[i]:
                self._note_run(t0 + i - 1)
                self._run_word, self._run_len = -1, 0
                continue
            w = best[i]
            step = t0 + i
            if w != self._run_word:
                self._note_run(step - 1)
                self._run_word, self._run_start, self._run_len, self._run_fired = w, step, 0, False
                self._run_noted, self._run_id, self._run_code = False, None, 0
            self._run_len += 1
            self._run_code = max(self._run_code, int(c_best[i]))
            if self._run_len >= cfg.min_steps and self._run_id is None:
                self._run_id = next(self.ids)
            if self._run_len >= cfg.min_steps and not self._run_fired:
                if self._last_fire is None or step - self._last_fire > self._refr_steps:
                    self._last_fire = step
                    self._run_fired = True
                    out.append(Keyword(self.vocabulary[w], float(c_best[i]) / 255.0,
                                       self._run_start * self.step_s, step * self.step_s, step,
                                       stretch=self._run_id))
        return out


def classify(cadc: np.ndarray, n_words: int, has_none_unit: bool, config: DecisionConfig
             ) -> tuple[int | None, np.ndarray]:
    """Offline decision for one file: (word index or None if rejected, per-unit max codes)."""
    c = np.asarray(cadc)
    if c.ndim != 2 or c.shape[1] != n_words + (1 if has_none_unit else 0):
        raise ValueError(f"cadc has shape {c.shape}, expected [T x {n_words + int(has_none_unit)}]")
    if c.shape[0] == 0:
        return None, np.zeros(c.shape[1], np.int32)
    scores = c.max(axis=0).astype(np.int32)
    w = int(classify_scores(scores[None, :], n_words, has_none_unit, config.threshold, config.offline_reject)[0])
    return (None if w < 0 else w), scores


def classify_scores(scores: np.ndarray, n_words: int, has_none_unit: bool, threshold: int,
                    offline_reject: bool = True) -> np.ndarray:
    """The offline rule of :func:`classify` on files' per-unit scores (each unit's maximum code),
    one row per file: the word index of each row, or -1 where it is rejected (the best word is
    below ``threshold``, or ``offline_reject`` and the none unit beats it)."""
    s = np.asarray(scores)
    if s.ndim != 2 or s.shape[1] != n_words + (1 if has_none_unit else 0) or n_words < 1:
        raise ValueError(f"scores has shape {s.shape}, expected [files x {n_words + int(has_none_unit)}]")
    w = s[:, :n_words].argmax(axis=1)
    best = s[np.arange(s.shape[0]), w]
    rejected = best < threshold
    if has_none_unit and offline_reject:
        rejected |= s[:, n_words] > best
    return np.where(rejected, -1, w).astype(np.int64)


# -- the same rules on a whole recorded stream, vectorised (calibration sweeps) ----------

def _check_codes(cadc: np.ndarray, n_units: int | None) -> None:
    c = np.asarray(cadc)
    if c.ndim != 2 or (n_units is not None and c.shape[1] != n_units):
        raise ValueError(f"cadc must be [T x {n_units if n_units is not None else 'n_units'}], got shape {c.shape}")
    if c.dtype != np.uint8:
        raise TypeError(f"cadc must be uint8 codes, got {c.dtype}")


def decide_offline_fast(cadc: np.ndarray, vocabulary: Sequence[str], has_none_unit: bool,
                        config: DecisionConfig, step_ms: float = 1.0) -> list[Keyword]:
    """Exactly the keywords of ``Decider(...).update(cadc)`` followed by ``flush()``
    (one block, no gaps), but fast, for calibration sweeps.

    Run rule: a step can be evidence only if its best word code is >=
    threshold; the Decider ends evidence runs both at non-evidence steps and at
    gaps in the step numbering, so feeding it only the candidate stretches
    (with their true ``t0``) gives the same keywords, refractory included.
    Segment rule: :func:`segments` then :func:`select_segments`.
    """
    n_words = len(vocabulary)
    _check_codes(cadc, n_words + (1 if has_none_unit else 0))
    if config.rule == "segment":
        seg = segments(cadc, n_words, config.threshold, config.hold_steps, config.max_steps)
        return select_segments(seg, list(vocabulary), config, step_ms)
    dec = Decider(list(vocabulary), has_none_unit, config, step_ms=step_ms)
    cand = cadc[:, :n_words].max(axis=1) >= config.threshold
    if not cand.any():
        return []
    d = np.diff(np.concatenate([[0], cand.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    out: list[Keyword] = []
    for a, b in zip(starts, ends):
        if b - a >= config.min_steps:
            out.extend(dec.update(cadc[a:b], t0=int(a)))
    return out


def segments(cadc: np.ndarray, n_words: int, threshold: int, hold_steps: int, max_steps: int) -> dict:
    """The segment rule's segments of a whole stream (see this module's docstring),
    vectorised: ``start``, ``last`` (last active step), ``decide`` (decision
    step; the last step when the stream ends first) and ``max`` (per-unit
    maximum codes over ``start..decide``, int16 [S x n_units])."""
    c = np.asarray(cadc)
    _check_codes(c, None)
    if not 1 <= n_words <= c.shape[1]:
        raise ValueError(f"n_words must be in 1..{c.shape[1]} (the cadc columns), got {n_words}")
    n = c.shape[0]
    active = c[:, :n_words].max(axis=1) >= threshold if n else np.zeros(0, bool)
    d = np.diff(np.concatenate([[0], active.astype(np.int8), [0]]))
    a, e = np.flatnonzero(d == 1), np.flatnonzero(d == -1)  # active runs [a, e)
    starts, lasts, decides = [], [], []
    if a.size:
        # runs separated by at most hold_steps inactive steps form one group
        brk = np.flatnonzero(a[1:] - e[:-1] > hold_steps) + 1
        g0 = np.concatenate([[0], brk])
        g1 = np.concatenate([brk, [a.size]])
        act_idx = None
        for i0, i1 in zip(g0, g1):
            s0, g_last = int(a[i0]), int(e[i1 - 1]) - 1  # first and last active step of the group
            while True:  # split the group where segments reach max_steps
                cut = s0 + max_steps - 1
                if cut < g_last:
                    if act_idx is None:
                        act_idx = np.flatnonzero(active)
                    j = int(np.searchsorted(act_idx, cut, side="right"))
                    starts.append(s0)
                    lasts.append(int(act_idx[j - 1]))
                    decides.append(cut)
                    s0 = int(act_idx[j])
                    continue
                starts.append(s0)
                lasts.append(g_last)
                decides.append(min(g_last + hold_steps + 1, cut, n - 1))
                break
    start = np.asarray(starts, np.int64)
    decide = np.asarray(decides, np.int64)
    if start.size:
        padded = np.concatenate([c, c[-1:]]).astype(np.int16)
        idx = np.empty(2 * start.size, np.int64)
        idx[0::2], idx[1::2] = start, decide + 1
        mx = np.maximum.reduceat(padded, idx, axis=0)[0::2]
    else:
        mx = np.zeros((0, c.shape[1] if c.ndim == 2 else 0), np.int16)
    return {"start": start, "last": np.asarray(lasts, np.int64), "decide": decide, "max": mx}


def select_segments(seg: dict, vocabulary: Sequence[str], config: DecisionConfig, step_ms: float) -> list[Keyword]:
    """The keywords the segment rule fires for ``seg`` (from :func:`segments`):
    peak, margin, min_steps, then the refractory time, in decision order."""
    n_words = len(vocabulary)
    mx = seg["max"]
    if mx.shape[0] == 0:
        return []
    w = mx[:, :n_words].argmax(axis=1)
    rows = np.arange(mx.shape[0])
    best = mx[rows, w]
    if mx.shape[1] > 1:
        masked = mx.copy()
        masked[rows, w] = -1
        other = masked.max(axis=1)
    else:
        other = np.full(mx.shape[0], -1, np.int16)
    ok = ((seg["last"] - seg["start"] + 1 >= config.min_steps) & (best >= config.peak)
          & (best - other >= config.margin))
    refr = int(round(config.refractory_ms / step_ms))
    step_s = step_ms / 1000.0
    out, last_fire = [], None
    for i in np.flatnonzero(ok):
        t = int(seg["decide"][i])
        if last_fire is not None and t - last_fire <= refr:
            continue
        last_fire = t
        out.append(Keyword(vocabulary[int(w[i])], float(best[i]) / 255.0, int(seg["start"][i]) * step_s,
                           t * step_s, t))
    return out
