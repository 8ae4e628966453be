"""tools/noise.py: the one home of coloured noise (training context and stream backgrounds)."""
from __future__ import annotations

import numpy as np
import pytest

from spikewire.tools import augment, streams
from spikewire.tools.evaluate import EvalError
from spikewire.tools.noise import COLOURS, at_level, shaped, unit_rms


def _slope(x: np.ndarray) -> float:
    """Log-log slope of the power spectrum between 1/200 and 1/4 of the sample rate."""
    p = np.abs(np.fft.rfft(x)) ** 2
    f = np.arange(p.size)
    band = (f > p.size / 100) & (f < p.size / 2)
    # average over octave-ish bins so the Gaussian scatter does not dominate
    edges = np.unique(np.geomspace(f[band][0], f[band][-1], 24).astype(int))
    fc = [np.sqrt(a * b) for a, b in zip(edges[:-1], edges[1:])]
    pc = [p[a:b].mean() for a, b in zip(edges[:-1], edges[1:])]
    return float(np.polyfit(np.log(fc), np.log(pc), 1)[0])


@pytest.mark.parametrize("colour, slope", [("white", 0.0), ("pink", -1.0), ("brown", -2.0)])
def test_spectral_slopes(colour, slope):
    x = unit_rms(np.random.default_rng(1), 1 << 16, colour)
    assert _slope(x) == pytest.approx(slope, abs=0.15)
    assert np.sqrt(np.mean(x ** 2)) == pytest.approx(1.0, abs=1e-9)


def test_levels_and_seeds():
    for colour in COLOURS:
        y = at_level(np.random.default_rng(2), 8000, colour, -30.0)
        assert y.dtype == np.float32
        assert 20 * np.log10(np.sqrt(np.mean(y.astype(np.float64) ** 2))) == pytest.approx(-30.0, abs=1e-3)
        np.testing.assert_array_equal(y, at_level(np.random.default_rng(2), 8000, colour, -30.0))
        assert not np.array_equal(y, at_level(np.random.default_rng(3), 8000, colour, -30.0))
    # short inputs: nothing to shape, still the requested level, never NaN
    assert shaped(np.random.default_rng(0), 0, "pink").shape == (0,)
    one = at_level(np.random.default_rng(0), 1, "pink", -20.0)
    assert one.shape == (1,) and abs(float(one[0])) == pytest.approx(0.1, rel=1e-5)


def test_training_and_streams_draw_the_same_noise():
    """Both users call this module: the stream background is the training context's noise at a level."""
    a = streams.make_noise(5000, "pink", -40.0, np.random.default_rng(9))
    b = unit_rms(np.random.default_rng(9), 5000, "pink") * 10 ** (-40 / 20)
    np.testing.assert_allclose(a, b.astype(np.float32), rtol=1e-5, atol=1e-9)
    assert augment.unit_rms is unit_rms and streams.at_level is at_level


def test_bad_colour_is_a_clear_error():
    with pytest.raises(ValueError, match="noise colour must be one of white, pink, brown"):
        shaped(np.random.default_rng(0), 10, "blue")
    with pytest.raises(EvalError, match="noise kind"):
        streams.make_noise(0, "brown", None, np.random.default_rng(0))  # streams offer pink/white/none
