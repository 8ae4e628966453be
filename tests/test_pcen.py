"""Tests of the front end's per-channel normalisation (normalize="pcen").

docs/frontend.md "PCEN" has the formulas. What is checked here: the version-1
configs keep their dict and hash; the PCEN keys serialise, round-trip and are
validated; the C kernel equals the numpy reference bit for bit at several
rates and parameter sets; any block partition gives the same events; a
pinned hash of the events of a generated signal (the golden value, also
compared between gcc, clang and aarch64 by tests/c/run.sh on its own signal);
and the behaviour it is there for: on the bundled real recording a 20 dB
quieter copy gives nearly the same spikes, while the log path loses most of
them, and stationary noise that steps up in level is adapted to.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spikewire import frontend as fe_mod
from spikewire.assets import demo_recording
from spikewire.audio import read_wav
from spikewire.frontend import Events, FrontEnd, FrontEndConfig, encode

WAV = demo_recording()

PCEN = FrontEndConfig(normalize="pcen", floor_db=-110.0)
PCEN_B = FrontEndConfig(normalize="pcen", floor_db=-95.0, pcen_ms=50.0, pcen_alpha=0.6,
                        pcen_offset_db=2.0, pcen_eps_db=-80.0, pcen_range_db=20.0,
                        max_rate_hz=300.0, n_channels=32, step_ms=2.0)
# Pinned: the events of `signal(16000)` with PCEN (C kernel == reference).
PCEN_EVENTS_SHA256 = "1fe29de868964de257c087d4584c2d4300aa9486fecef2b263de5efc7e271f9d"
V1_DEFAULT_HASH = "985276d54e90da2b7fa1e5d2bf1db6fa61378c0192a2b2c286cb41776a5322e6"


def signal(rate: int, seconds: float = 1.5, seed: int = 0) -> np.ndarray:
    """Speech-like bursts over quiet noise with a 24 dB level jump, float64."""
    rng = np.random.default_rng(seed)
    n = int(round(rate * seconds))
    t = np.arange(n) / rate
    f0 = 140.0 + 40.0 * np.sin(2 * np.pi * 3.0 * t)
    ph = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(h * ph) / h for h in range(1, 16) if h * 190 < 0.45 * rate)
    x = x * (0.5 + 0.5 * np.sin(2 * np.pi * 5.0 * t)) * np.where(t > 0.7, 0.5, 0.03)
    x = x + 1e-3 * rng.standard_normal(n)
    return np.clip(x / 4.0, -1.0, 1.0)


def same(a: Events, b: Events) -> bool:
    return np.array_equal(a.indptr, b.indptr) and np.array_equal(a.channels, b.channels)


def events_sha(ev: Events) -> str:
    h = hashlib.sha256()
    h.update(ev.indptr.astype("<i8").tobytes())
    h.update(ev.channels.astype("<i4").tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------ config

def test_default_and_v1_configs_keep_their_dict_and_hash():
    d = FrontEndConfig().to_dict()
    assert not any(k.startswith("pcen") or k == "normalize" for k in d)
    assert FrontEndConfig().config_hash() == V1_DEFAULT_HASH
    assert FrontEndConfig(normalize="none").config_hash() == V1_DEFAULT_HASH
    # a version-1 dict (no normalisation keys) still loads
    assert FrontEndConfig.from_dict(d) == FrontEndConfig()


def test_pcen_config_roundtrip_hash_and_missing_keys():
    d = PCEN_B.to_dict()
    for k in ("normalize", "pcen_ms", "pcen_alpha", "pcen_offset_db", "pcen_eps_db", "pcen_range_db"):
        assert k in d
    back = FrontEndConfig.from_dict(json.loads(json.dumps(d)))
    assert back == PCEN_B and back.config_hash() == PCEN_B.config_hash()
    assert PCEN.config_hash() != V1_DEFAULT_HASH
    assert PCEN.config_hash() != FrontEndConfig(normalize="pcen", floor_db=-110.0, pcen_ms=401.0).config_hash()
    d2 = dict(d)
    del d2["pcen_ms"]
    with pytest.raises(ValueError, match="missing.*'pcen_ms'"):
        FrontEndConfig.from_dict(d2)


@pytest.mark.parametrize("kw, msg", [
    (dict(normalize="agc"), r"normalize = 'agc'"),
    (dict(pcen_ms=100.0), r"pcen_ms = 100.0: applies only with normalize='pcen'"),
    (dict(normalize="pcen", pcen_ms=0.5), r"pcen_ms = 0.5"),
    (dict(normalize="pcen", pcen_alpha=1.5), r"pcen_alpha = 1.5"),
    (dict(normalize="pcen", pcen_offset_db=99.0), r"pcen_offset_db = 99.0"),
    (dict(normalize="pcen", pcen_eps_db=-130.0), r"pcen_eps_db = -130.0"),
    (dict(normalize="pcen", pcen_range_db=0.0), r"pcen_range_db = 0.0"),
    (dict(normalize="pcen", floor_db=-130.0), r"floor_db = -130.0: must be >= -120"),
])
def test_bad_pcen_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        FrontEndConfig(**kw)


# ------------------------------------------------------------------ kernels

@pytest.mark.parametrize("cfg", [PCEN, PCEN_B], ids=["default", "other"])
@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_c_matches_reference_bit_exact(cfg, rate):
    x = signal(rate, seconds=0.9)
    c = encode(x, rate, cfg, kernel="c")
    r = encode(x, rate, cfg, kernel="reference")
    assert c.n_events > 200
    assert same(c, r)


def test_log2q_mirror_exact_over_the_range():
    """The Q16 log2 of Q56 values (the C twin is checked through the events above):
    exact at powers of two, within the own log2's error elsewhere, monotone."""
    k = np.float32(2.0 / np.log(2.0))
    v = np.array([1 << 16, (1 << 16) + 1, 3 << 40, (1 << 56), (1 << 62) - 1], dtype=np.int64)
    q = fe_mod._pcen_log2q(v, k)
    assert q[0] == -40 * 65536 and q[3] == 0                  # exact powers of two
    assert abs(q[2] - round((np.log2(3.0) - 16) * 65536)) <= 1   # own log2: |error| < 2e-6
    assert abs(q[4] - 6 * 65536) <= 1
    assert np.all(np.diff(fe_mod._pcen_log2q(np.arange(1 << 20, (1 << 20) + 4096, dtype=np.int64), k)) >= 0)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rate=st.sampled_from([8000, 16000, 48000]),
       sizes=st.lists(st.integers(1, 900), min_size=1, max_size=6))
def test_block_invariance(rate, sizes):
    x = signal(rate, seconds=0.8, seed=1)
    whole = encode(x, rate, PCEN, kernel="c")
    fe = FrontEnd(PCEN, rate, kernel="c")
    parts, i, j = [], 0, 0
    while i < x.shape[0]:
        k = sizes[j % len(sizes)]
        parts.append(fe.process(x[i:i + k]))
        i += k
        j += 1
    parts.append(fe.flush())
    assert same(Events.concat(parts), whole)


def test_pinned_events_golden():
    ev = encode(signal(16000), 16000, PCEN, kernel="c")
    assert same(ev, encode(signal(16000), 16000, PCEN, kernel="reference"))
    assert events_sha(ev) == PCEN_EVENTS_SHA256


def test_reset_restores_the_smoother():
    x = signal(8000, seconds=0.6)
    fe = FrontEnd(PCEN, 8000, kernel="c")
    first = Events.concat([fe.process(x), fe.flush()])      # flush resets
    again = Events.concat([fe.process(x), fe.flush()])
    assert same(first, again)


# ------------------------------------------------------------------ behaviour

def _counts(ev: Events, c: int = 64) -> np.ndarray:
    return np.bincount(ev.channels, minlength=c)


def test_quieter_copy_of_a_real_recording_keeps_its_spikes():
    x, rate = read_wav(WAV)
    # a quiet room under the recording (its pauses are digital silence)
    x = x + 10 ** (-70 / 20) * np.random.default_rng(0).standard_normal(x.shape[0])
    log, pcen = FrontEndConfig(), PCEN
    ref_log, ref_pcen = _counts(encode(x, rate, log)), _counts(encode(x, rate, pcen))
    q_log, q_pcen = _counts(encode(x * 0.1, rate, log)), _counts(encode(x * 0.1, rate, pcen))
    # the log path loses most spikes 20 dB down, PCEN keeps most of them ...
    assert q_log.sum() < 0.2 * ref_log.sum()
    assert q_pcen.sum() > 0.8 * ref_pcen.sum()
    # ... in the same channels
    assert np.corrcoef(ref_pcen, q_pcen)[0, 1] > 0.85
    assert np.corrcoef(ref_pcen, q_pcen)[0, 1] > np.corrcoef(ref_log, q_log)[0, 1] + 0.1


def test_stationary_noise_is_adapted_to():
    rate = 8000
    rng = np.random.default_rng(3)
    n = rate * 4
    x = rng.standard_normal(n) * np.where(np.arange(n) < n // 2, 0.003, 0.05)   # +24 dB at 2 s
    ev = encode(x, rate, PCEN)
    per_step = np.diff(ev.indptr)
    steps_s = 1000
    before = per_step[1 * steps_s:2 * steps_s].sum()          # adapted to the quiet noise
    jump = per_step[2 * steps_s:2 * steps_s + 200].sum() * 5  # first 200 ms after the step, per s
    after = per_step[3 * steps_s:4 * steps_s].sum()           # adapted to the loud noise
    assert jump > 4 * max(before, 1)
    assert after < 2 * before + 64
    # the log path has no adaptation: far more spikes in loud noise than in quiet
    lg = np.diff(encode(x, rate, FrontEndConfig()).indptr)
    assert lg[3 * steps_s:4 * steps_s].sum() > 4 * lg[1 * steps_s:2 * steps_s].sum()
