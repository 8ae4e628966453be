"""Coloured Gaussian noise, the one home for the tools (training context, stream backgrounds).

``white``: flat power spectrum; ``pink``: power 1/f; ``brown``: power 1/f^2.  The colour is
shaped in the frequency domain (``rfft``, amplitude divided by sqrt(f) or f, the DC bin zeroed)
from ``rng.standard_normal(n)``, so a seeded generator gives the same samples everywhere.
"""
from __future__ import annotations

import numpy as np

COLOURS = ("white", "pink", "brown")


def shaped(rng: np.random.Generator, n: int, colour: str) -> np.ndarray:
    """``n`` samples (float64) of ``colour`` noise at whatever level the shaping leaves; draws ``n``
    standard normals from ``rng``.  Fewer than two samples have no spectrum to shape: white."""
    if colour not in COLOURS:
        raise ValueError(f"noise colour must be one of {', '.join(COLOURS)}, got {colour!r}")
    w = rng.standard_normal(n)
    if colour != "white" and n > 1:
        spec = np.fft.rfft(w)
        f = np.arange(spec.shape[0], dtype=np.float64)
        f[0] = 1.0
        spec = spec / (np.sqrt(f) if colour == "pink" else f)
        spec[0] = 0.0
        w = np.fft.irfft(spec, n)
    return w


def unit_rms(rng: np.random.Generator, n: int, colour: str) -> np.ndarray:
    """:func:`shaped` scaled to RMS 1 (float64)."""
    w = shaped(rng, n, colour)
    rms = np.sqrt(np.mean(w ** 2)) if n else 1.0
    return w / (rms + 1e-12)


def at_level(rng: np.random.Generator, n: int, colour: str, level_db: float) -> np.ndarray:
    """:func:`shaped` scaled to RMS ``level_db`` dBFS (0 dBFS = RMS 1.0), float32."""
    w = shaped(rng, n, colour)
    rms = float(np.sqrt(np.mean(w * w))) if n else 1.0
    return (w * (10.0 ** (level_db / 20.0) / (rms or 1.0))).astype(np.float32)
