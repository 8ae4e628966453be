"""Augmentation: each word inside random background context (silence or coloured noise at a random
SNR) with a random gain and speed, and background noise segments for the "no keyword" unit.
Everything is drawn from the generator passed in (seeded by the caller)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .noise import COLOURS, unit_rms
from .recipe import TrainConfig


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
        color = COLOURS[int(rng.integers(3))]
        level = _rms(x) * gain / (10 ** (snr / 20))
        y = y + level * unit_rms(rng, y.shape[0], color)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def noise_segment(rng: np.random.Generator, rate: int = 8000) -> np.ndarray:
    """A background segment: coloured noise at a random level (-70..-15 dBFS RMS), 0.3-1.0 s."""
    n = int(rng.uniform(0.3, 1.0) * rate)
    color = COLOURS[int(rng.integers(3))]
    level = 10 ** (rng.uniform(-70.0, -15.0) / 20)
    y = level * unit_rms(rng, n, color)
    if rng.random() < 0.3:  # a level change in the middle (doors, fans switching)
        k = int(rng.integers(n // 4, 3 * n // 4))
        y[k:] *= 10 ** (rng.uniform(-20, 20) / 20)
    return np.clip(y, -1, 1).astype(np.float32)
