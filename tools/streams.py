"""Streaming test recordings: utterances in a seeded random order with random gaps over
background noise (:func:`build_stream`), run through FrontEnd -> core -> Decider in blocks
(:func:`run_stream`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from spikewire.audio import read_wav
from spikewire.config import Chip
from spikewire.decision import DecisionConfig, Keyword
from spikewire.frontend import FrontEnd
from spikewire.model import Model
from spikewire.progress import Progress

from .datasets import Utterance
from .errors import EvalError
from .noise import at_level


#: Streaming defaults (documented in docs/evaluation.md).
GAP_S = (0.3, 2.0)
NOISE_KIND = "pink"
NOISE_DB = -50.0  # background noise RMS in dBFS (FSDD speech is about -20 dBFS RMS when active)
BLOCK_MS = 10.0


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
    if kind not in ("pink", "white", "none"):
        raise EvalError(f"noise kind must be 'pink', 'white' or 'none', got {kind!r}")
    if kind == "none" or level_db is None or n == 0:
        return np.zeros(n, np.float32)
    return at_level(rng, n, kind, level_db)


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
               decision: Optional[DecisionConfig] = None, progress: bool = False) -> tuple[list[Keyword], np.ndarray]:
    """Stream the recording through FrontEnd -> core -> Decider in ``block_ms`` blocks
    (state carried over, never reset). Returns the keywords and the CADC codes [T x n_units].
    ``progress``: blocks done, rate and time left on stderr."""
    fe = FrontEnd(model.frontend, stream.rate)
    core = model.make_core(chip)
    dec = model.decider(decision)
    block = max(1, int(round(stream.rate * block_ms / 1000.0)))
    keywords: list[Keyword] = []
    cadc = []
    x = stream.samples
    starts = range(0, len(x) + block, block)  # the last pass flushes the front end
    bar = Progress(len(starts), f"stream (seed {stream.seed}) blocks") if progress else None
    try:
        core.reset()
        for i in starts:
            if bar is not None:
                bar.update()
            ev = fe.process(x[i:i + block]) if i < len(x) else fe.flush()
            if ev.n_steps == 0:
                continue
            out = core.run(ev)
            cadc.append(out.cadc)
            keywords.extend(dec.update(out.cadc))
        keywords.extend(dec.flush())
    finally:
        core.close()
        if bar is not None:
            bar.close()
    codes = np.concatenate(cadc) if cadc else np.zeros((0, len(model.labels)), np.uint8)
    return keywords, codes
