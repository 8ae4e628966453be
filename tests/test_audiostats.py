"""Tests for tools/audiostats.py on generated audio (levels, tilt, and the front-end speaker spread)."""
from __future__ import annotations

import numpy as np

from spikewire.frontend import FrontEndConfig
from spikewire.tools.audiostats import frontend_stats, noise_floor_db, pink, tilt_db_per_octave
from spikewire.tools.voices import VOICES_FRONTEND


def test_tilt_of_white_and_pink_noise():
    rng = np.random.default_rng(0)
    white = rng.standard_normal(16000 * 2)
    assert abs(tilt_db_per_octave(white, 16000)) < 0.5
    assert abs(tilt_db_per_octave(pink(16000 * 2, -20.0, rng), 16000) + 3.0) < 0.6


def test_noise_floor_finds_the_quiet_part():
    rng = np.random.default_rng(1)
    x = np.concatenate([0.001 * rng.standard_normal(4000), 0.3 * rng.standard_normal(4000)])
    assert abs(noise_floor_db(x, 8000) + 60.0) < 1.5


def _voice(rate, f0, amp, seed):
    rng = np.random.default_rng(seed)
    t = np.arange(int(0.6 * rate)) / rate
    x = sum(np.sin(2 * np.pi * h * f0 * t) / h for h in range(1, 12))
    x = x * np.hanning(t.shape[0]) + 1e-4 * rng.standard_normal(t.shape[0])
    return amp * x / np.max(np.abs(x))


def test_pcen_spreads_loud_and_quiet_speakers_less_than_log():
    files = {"loud": [(_voice(8000, 120, 0.5, i), 8000) for i in range(3)],
             "quiet": [(_voice(8000, 120, 0.01, i), 8000) for i in range(3)]}
    log = frontend_stats(files, FrontEndConfig(step_ms=4.0, max_rate_hz=400.0, max_spikes_per_step=8))
    pcen = frontend_stats(files, FrontEndConfig(step_ms=4.0, **VOICES_FRONTEND))
    assert log["speaker_spread_log2_rate"] > 1.0          # 34 dB apart: several octaves of event rate
    assert pcen["speaker_spread_log2_rate"] < 0.5 * log["speaker_spread_log2_rate"]
    for r in (log, pcen):
        assert -1.0 <= r["noise_corr_median"] <= 1.0 and r["events_per_s_range"][0] <= r["events_per_s_median"]
