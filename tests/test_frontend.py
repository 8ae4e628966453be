"""Tests of the streaming audio front end (runtime/frontend.py, csrc/frontend.c).

Audio is generated here (tones, noise); nothing is read from disk. The C
kernel is used where the extension is built, and is checked bit-exact
against the numpy reference; without it the C-only tests skip and the rest
run on the reference.
"""
from __future__ import annotations

import dataclasses
import json
import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spikewire.frontend import (
    ALGORITHM_VERSION,
    Events,
    FrontEnd,
    FrontEndConfig,
    center_frequencies,
    encode,
)
from spikewire import frontend as fe_mod

HAVE_C = fe_mod._load_c() is not None
KERNEL = "c" if HAVE_C else "reference"
needs_c = pytest.mark.skipif(not HAVE_C, reason="C extension spikewire._spikewire_c not built")

RATES = [8000, 16000, 44100, 48000]
CFG = FrontEndConfig()

# Pinned: changing any default or the canonical JSON changes this on purpose
# (it keys spike caches and is stored in model files).
DEFAULT_HASH = "985276d54e90da2b7fa1e5d2bf1db6fa61378c0192a2b2c286cb41776a5322e6"


def tone(rate: int, seconds: float, freq: float, amp: float = 0.25, seed: int = 0,
         noise: float = 0.0) -> np.ndarray:
    n = int(round(rate * seconds))
    t = np.arange(n) / rate
    x = amp * np.sin(2 * np.pi * freq * t)
    if noise:
        x = x + noise * np.random.default_rng(seed).standard_normal(n)
    return np.clip(x, -1.0, 1.0)


def speechlike(rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """Harmonic complex with gliding f0, amplitude modulation and noise, float64."""
    rng = np.random.default_rng(seed)
    n = int(round(rate * seconds))
    t = np.arange(n) / rate
    f0 = 130.0 + 50.0 * np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 6))
    ph = 2 * np.pi * np.cumsum(f0) / rate
    x = sum(np.sin(h * ph) / h for h in range(1, 20) if h * 180 < 0.45 * rate)
    x = x * (0.5 + 0.5 * np.sin(2 * np.pi * 9.0 * t)) + 0.05 * rng.standard_normal(n)
    return 0.5 * x / np.max(np.abs(x))


def same(a: Events, b: Events) -> bool:
    return (a.indptr.dtype == np.int64 and b.indptr.dtype == np.int64
            and a.channels.dtype == np.int32 and b.channels.dtype == np.int32
            and np.array_equal(a.indptr, b.indptr) and np.array_equal(a.channels, b.channels))


def blocks(fe: FrontEnd, x: np.ndarray, sizes) -> Events:
    parts, i, j = [], 0, 0
    while i < x.shape[0]:
        k = sizes[j % len(sizes)]
        parts.append(fe.process(x[i:i + k]))
        i += k
        j += 1
    parts.append(fe.flush())
    return Events.concat(parts)


def check_csr(ev: Events, n_channels: int) -> None:
    assert ev.indptr.ndim == 1 and ev.indptr[0] == 0
    assert np.all(np.diff(ev.indptr) >= 0)
    assert ev.indptr[-1] == ev.n_events
    if ev.n_events:
        assert ev.channels.min() >= 0 and ev.channels.max() < n_channels


# ---------------------------------------------------------------- streaming

@settings(max_examples=100 if HAVE_C else 8, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(rate=st.sampled_from(RATES),
       seed=st.integers(0, 2**16),
       sizes=st.lists(st.integers(1, 700), min_size=1, max_size=8),
       ms=st.integers(0, 90))
def test_block_invariance(rate, seed, sizes, ms):
    x = speechlike(rate, ms / 1000.0, seed=seed) if ms else np.zeros(0)
    whole = encode(x, rate, CFG, kernel=KERNEL)
    fe = FrontEnd(CFG, rate, kernel=KERNEL)
    assert same(blocks(fe, x, sizes), whole)
    check_csr(whole, CFG.n_channels)


@pytest.mark.parametrize("rate", RATES)
def test_block_invariance_fixed_partitions(rate):
    x = speechlike(rate, 0.08, seed=rate)
    fe = FrontEnd(CFG, rate, kernel=KERNEL)
    whole = blocks(fe, x, [x.shape[0]])
    assert whole.n_events > 0
    ten_ms = rate // 100
    for sizes in ([1], [37], [ten_ms], [3, 1, 400, 2]):
        assert same(blocks(fe, x, sizes), whole), sizes


def test_process_without_flush_is_prefix_of_encode():
    x = speechlike(16000, 0.1, seed=3)
    fe = FrontEnd(CFG, 16000, kernel=KERNEL)
    head = Events.concat([fe.process(x[:999]), fe.process(x[999:])])
    full = encode(x, 16000, CFG, kernel=KERNEL)
    assert head.n_steps <= full.n_steps
    assert np.array_equal(head.indptr, full.indptr[: head.n_steps + 1])
    assert np.array_equal(head.channels, full.channels[: head.n_events])


def test_reset_restarts_the_stream():
    x = speechlike(16000, 0.05, seed=4)
    fe = FrontEnd(CFG, 16000, kernel=KERNEL)
    a = fe.process(x)
    fe.process(x[:123])
    fe.reset()
    assert same(fe.process(x), a)


@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("n", [0, 1, 2, 7, 8, 9, 1001])
def test_step_count(rate, n):
    fe = FrontEnd(CFG, rate, kernel=KERNEL)
    x = np.zeros(n, dtype=np.int16)
    ev = Events.concat([fe.process(x), fe.flush()])
    internal = -(-n * CFG.sample_rate // rate)
    assert ev.n_steps == -(-internal // CFG.step_samples)


def test_empty_and_single_sample_blocks():
    fe = FrontEnd(CFG, 8000, kernel=KERNEL)
    e0 = fe.process(np.zeros(0, dtype=np.float32))
    assert e0.n_steps == 0 and e0.n_events == 0 and e0.indptr.tolist() == [0]
    steps = sum(fe.process(np.zeros(1, dtype=np.int16)).n_steps for _ in range(CFG.step_samples))
    assert steps == 1


# ---------------------------------------------------------------- kernels

@needs_c
@pytest.mark.parametrize("rate", RATES + [22050, 11025])
def test_c_matches_reference_bit_exact(rate):
    x = speechlike(rate, 0.06, seed=rate)
    c = encode(x, rate, CFG, kernel="c")
    r = encode(x, rate, CFG, kernel="reference")
    assert c.n_events > 0
    assert same(c, r)


@needs_c
def test_c_matches_reference_nondefault_config():
    cfg = FrontEndConfig(n_channels=16, filter_stages=3, scale="erb", preemphasis=0.0,
                         max_spikes_per_step=1, max_rate_hz=400.0, envelope_ms=3.0)
    x = speechlike(16000, 0.05, seed=9)
    assert same(encode(x, 16000, cfg, kernel="c"), encode(x, 16000, cfg, kernel="reference"))


def test_log2_approximation():
    x = np.float32(2.0) ** np.linspace(-60, 20, 2001).astype(np.float32)
    got = fe_mod._log2_f32(x, np.float32(2.0 / math.log(2.0)))
    assert np.max(np.abs(got - np.log2(x.astype(np.float64)))) < 2e-5


# ---------------------------------------------------------------- input kinds

@pytest.mark.parametrize("rate", [8000, 16000])
def test_int16_and_float_inputs_agree(rate):
    rng = np.random.default_rng(5)
    pcm = np.clip(speechlike(rate, 0.05) * 32768, -32768, 32767).astype(np.int16)
    pcm[rng.integers(0, pcm.size, 10)] = -32768
    ref = encode(pcm, rate, CFG, kernel=KERNEL)
    for dt in (np.float32, np.float64):
        assert same(encode(pcm.astype(dt) / dt(32768), rate, CFG, kernel=KERNEL), ref)


def test_float_full_scale_clips_to_int16_max():
    fe = FrontEnd(CFG, 8000, kernel="reference")
    q = fe_mod._as_pcm16(np.array([1.0, -1.0, 0.5 / 32768, 1.5 / 32768], dtype=np.float64))
    assert q.tolist() == [32767, -32768, 0, 2]
    assert fe.process(np.ones(3, dtype=np.float32)).n_steps == 0


def test_non_contiguous_input_ok():
    x = speechlike(16000, 0.04)
    assert same(encode(x[::-1][::-1].copy(), 16000, CFG, kernel=KERNEL),
                encode(np.repeat(x, 2)[::2], 16000, CFG, kernel=KERNEL))


# ---------------------------------------------------------------- behaviour

@pytest.mark.parametrize("rate", [8000, 48000])
def test_silence_gives_no_events(rate):
    assert encode(np.zeros(rate // 2, dtype=np.int16), rate, CFG, kernel=KERNEL).n_events == 0


def test_low_background_noise_gives_almost_no_events():
    n = 8000 // 2
    x = 3e-4 * np.random.default_rng(0).standard_normal(n)  # about -70 dBFS rms
    assert encode(x, 8000, CFG, kernel=KERNEL).n_events <= 5


def test_events_stop_soon_after_sound_ends():
    x = np.concatenate([tone(8000, 0.2, 1000.0, amp=0.5), np.zeros(8000 // 2)])
    d = encode(x, 8000, CFG, kernel=KERNEL).to_dense(CFG.n_channels)
    assert d[:200].sum() > 20
    assert d[300:].sum() == 0


@pytest.mark.parametrize("rate", [8000, 16000])
@pytest.mark.parametrize("freq", [250.0, 1000.0, 2500.0])
def test_tone_excites_channels_near_its_frequency(rate, freq):
    ev = encode(tone(rate, 0.25, freq, amp=0.3), rate, CFG, kernel=KERNEL)
    counts = np.bincount(ev.channels, minlength=CFG.n_channels)
    target = int(np.argmin(np.abs(center_frequencies(CFG) - freq)))
    assert counts.sum() > 50
    assert abs(int(np.argmax(counts)) - target) <= 2
    near = counts[max(0, target - 5): target + 6].sum()
    assert near >= 0.8 * counts.sum()


def test_louder_tone_gives_more_spikes_and_rates_are_moderate():
    quiet = encode(tone(8000, 0.3, 800.0, amp=0.02), 8000, CFG, kernel=KERNEL).n_events
    loud = encode(tone(8000, 0.3, 800.0, amp=0.3), 8000, CFG, kernel=KERNEL).n_events
    assert 0 < quiet < loud
    # a pure tone excites a handful of channels at tens of Hz, not hundreds
    assert loud / 0.3 < 2000


def test_time_alignment_across_input_rates():
    def onset(rate):
        x = np.concatenate([np.zeros(rate // 10), tone(rate, 0.1, 1000.0, amp=0.3)])
        ev = encode(x, rate, CFG, kernel=KERNEL)
        return int(np.searchsorted(ev.indptr, 1, side="left")) - 1

    ref = onset(8000)
    assert 100 <= ref <= 125  # envelope rise + sigma-delta accumulation
    for r in (16000, 44100, 48000):
        assert abs(onset(r) - ref) <= 2


def test_spikes_per_step_are_capped():
    cfg = FrontEndConfig(max_spikes_per_step=2, max_rate_hz=1000.0, ceiling_db=-50.0, floor_db=-60.0)
    d = encode(tone(8000, 0.1, 1000.0, amp=0.9), 8000, cfg, kernel=KERNEL).to_dense(cfg.n_channels)
    assert d.max() == 2


# ---------------------------------------------------------------- config

def test_config_roundtrip_and_json():
    cfg = FrontEndConfig(n_channels=32, scale="erb", floor_db=-70)
    d = cfg.to_dict()
    assert d["algorithm_version"] == ALGORITHM_VERSION
    assert isinstance(d["floor_db"], float)
    back = FrontEndConfig.from_dict(json.loads(json.dumps(d)))
    assert back == cfg and back.config_hash() == cfg.config_hash()


def test_config_hash_pinned_and_sensitive():
    assert CFG.config_hash() == DEFAULT_HASH
    assert FrontEndConfig(n_channels=64).config_hash() == DEFAULT_HASH   # int vs default
    assert FrontEndConfig(floor_db=-65).config_hash() == DEFAULT_HASH    # int -> float
    assert FrontEndConfig(n_channels=63).config_hash() != DEFAULT_HASH
    # independent of dict order
    d = CFG.to_dict()
    rev = dict(reversed(list(d.items())))
    assert FrontEndConfig.from_dict(rev).config_hash() == DEFAULT_HASH


def test_from_dict_rejects_unknown_missing_and_version():
    d = CFG.to_dict()
    with pytest.raises(ValueError, match="unknown.*'n_chans'"):
        FrontEndConfig.from_dict({**d, "n_chans": 3})
    d2 = dict(d)
    del d2["scale"]
    with pytest.raises(ValueError, match="missing.*'scale'"):
        FrontEndConfig.from_dict(d2)
    with pytest.raises(ValueError, match="algorithm_version 99"):
        FrontEndConfig.from_dict({**d, "algorithm_version": 99})
    with pytest.raises(ValueError, match="must be a dict"):
        FrontEndConfig.from_dict([("a", 1)])


@pytest.mark.parametrize("kw, msg", [
    (dict(n_channels=8), r"n_channels = 8"),
    (dict(n_channels=129), r"n_channels = 129"),
    (dict(n_channels=64.0), r"n_channels must be an int, got 64.0"),
    (dict(n_channels=True), r"must be an int, got True"),
    (dict(f_max_hz=4000.0), r"f_max_hz = 4000.0.*Nyquist"),
    (dict(f_min_hz=5000.0), r"f_min_hz = 5000.0"),
    (dict(scale="bark"), r"scale = 'bark'"),
    (dict(step_ms=0.3), r"not a whole number of samples"),
    (dict(floor_db=float("nan")), r"floor_db must be finite"),
    (dict(ceiling_db=-70.0), r"ceiling_db = -70.0"),
    (dict(max_spikes_per_step=0), r"max_spikes_per_step = 0"),
    (dict(preemphasis=1.0), r"preemphasis = 1.0"),
    (dict(compression="cuberoot"), r"compression = 'cuberoot'"),
    (dict(encoder="lif"), r"encoder = 'lif'"),
    (dict(filter_stages=5), r"filter_stages = 5"),
    (dict(sample_rate="8000"), r"sample_rate must be an int"),
])
def test_bad_config_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        FrontEndConfig(**kw)


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        CFG.n_channels = 3  # type: ignore[misc]


def test_other_internal_rate_and_channel_counts():
    for cfg in (FrontEndConfig(n_channels=16), FrontEndConfig(n_channels=128),
                FrontEndConfig(sample_rate=16000, f_max_hz=7600.0)):
        ev = encode(tone(16000, 0.05, 1200.0, amp=0.3), 16000, cfg, kernel=KERNEL)
        check_csr(ev, cfg.n_channels)
        assert ev.n_steps == 50 and ev.n_events > 0


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("x, exc, msg", [
    (np.zeros(10, dtype=np.int32), TypeError, "got dtype int32"),
    (np.zeros(10, dtype=np.uint8), TypeError, "got dtype uint8"),
    (np.zeros(10, dtype=np.float16), TypeError, "got dtype float16"),
    (np.zeros(10, dtype=np.complex64), TypeError, "got dtype complex64"),
    ([0.0, 0.1], TypeError, "numpy array, got list"),
    (np.zeros((10, 2), dtype=np.int16), ValueError, r"1-D mono, got shape \(10, 2\).*downmix"),
    (np.zeros((), dtype=np.float32), ValueError, r"got shape \(\)"),
    (np.array([0.0, np.nan, 0.0]), ValueError, r"samples\[1\] = nan"),
    (np.array([0.0, 0.0, -np.inf], dtype=np.float32), ValueError, r"samples\[2\] = -inf"),
    (np.array([0.5, 1.25]), ValueError, r"\[-1, 1\]; samples\[1\] = 1.25"),
])
def test_bad_input_blocks(x, exc, msg):
    fe = FrontEnd(CFG, 8000, kernel=KERNEL)
    fe.process(np.zeros(5, dtype=np.int16))
    before = fe._k.block_steps(3)
    with pytest.raises(exc, match=msg):
        fe.process(x)
    assert fe._k.block_steps(3) == before  # a rejected block leaves the state alone


@pytest.mark.parametrize("rate, exc, msg", [
    (0, ValueError, "input_rate must be in"),
    (500, ValueError, "got 500"),
    (16000.0, TypeError, "got 16000.0"),
    (True, TypeError, "got True"),
    (8001, ValueError, "interpolation factor 8000"),
])
def test_bad_input_rate(rate, exc, msg):
    with pytest.raises(exc, match=msg):
        FrontEnd(CFG, rate, kernel=KERNEL)


def test_bad_constructor_args():
    with pytest.raises(TypeError, match="FrontEndConfig"):
        FrontEnd({"n_channels": 64}, 8000)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kernel must be"):
        FrontEnd(CFG, 8000, kernel="gpu")


def test_auto_kernel_without_extension_warns(monkeypatch):
    monkeypatch.setattr(fe_mod, "_load_c", lambda: None)
    with pytest.warns(RuntimeWarning, match="reference"):
        fe = FrontEnd(CFG, 8000)
    assert fe.kernel == "reference"
    with pytest.raises(RuntimeError, match="not available"):
        FrontEnd(CFG, 8000, kernel="c")


# ---------------------------------------------------------------- C boundary

@needs_c
def test_c_rejects_bad_params_and_buffers():
    mod = fe_mod._load_c()
    ffi, lib = mod.ffi, mod.lib
    kp = fe_mod._kernel_params(CFG, 16000)
    k = fe_mod._CKernel(kp, mod)
    # too small output buffer: SW_E_BUFFER and no state change
    x = np.zeros(1600, dtype=np.int16)
    steps_before = k.block_steps(1600)
    ip = np.zeros(2, dtype=np.int64)
    ch = np.zeros(10, dtype=np.int32)
    ns, ne = ffi.new("int64_t *"), ffi.new("int64_t *")
    st_ = lib.sw_fe_process(k._fe, ffi.from_buffer("int16_t[]", x), x.size,
                            ffi.from_buffer("int64_t[]", ip), 1, ffi.from_buffer("int32_t[]", ch), 10, ns, ne)
    assert st_ == lib.SW_E_BUFFER
    assert k.block_steps(1600) == steps_before and steps_before > 1
    assert lib.sw_fe_process(ffi.NULL, ffi.NULL, 0, ffi.NULL, 0, ffi.NULL, 0, ns, ne) == lib.SW_E_NULL
    assert lib.sw_fe_process(k._fe, ffi.NULL, 5, ffi.from_buffer("int64_t[]", ip), 1,
                             ffi.NULL, 0, ns, ne) == lib.SW_E_NULL
    assert lib.sw_fe_process(k._fe, ffi.NULL, -1, ffi.NULL, 0, ffi.NULL, 0, ns, ne) == lib.SW_E_SIZE
    # bad parameters at create
    p = ffi.new("sw_fe_params *")
    coef = np.full((1, 1), 1 << 14, dtype=np.int16)
    sos = np.zeros((1, 5, 16), dtype=np.float32)
    p.n_channels, p.n_stages, p.step_samples, p.max_spikes = 16, 1, 8, 1
    p.rs_up = p.rs_down = p.rs_taps = 1
    p.rs_coef = ffi.cast("const int16_t *", ffi.from_buffer(coef))
    p.sos = ffi.cast("const float *", ffi.from_buffer(sos))
    p.preemph, p.env_alpha, p.power_scale, p.log2_k = 0.5, 0.1, 0.25, 2.88
    p.floor_power, p.log2_floor, p.drive_scale, p.tiny = 1e-6, -19.9, 0.01, 1e-18
    pp = ffi.new("sw_fe **")
    assert lib.sw_fe_create(p, pp) == lib.SW_OK
    assert lib.sw_fe_destroy(pp[0]) == lib.SW_OK
    for field, val, code in [("n_channels", 0, lib.SW_E_SIZE), ("n_channels", 129, lib.SW_E_SIZE),
                             ("env_alpha", float("nan"), lib.SW_E_PARAM),
                             ("preemph", 1.0, lib.SW_E_PARAM), ("rs_up", 0, lib.SW_E_PARAM)]:
        old = getattr(p, field)
        setattr(p, field, val)
        assert lib.sw_fe_create(p, pp) == code, field
        assert pp[0] == ffi.NULL
        setattr(p, field, old)
    coef_big = np.full((1, 4), 30000, dtype=np.int16)   # would overflow int32
    p.rs_taps, p.rs_coef = 4, ffi.cast("const int16_t *", ffi.from_buffer(coef_big))
    assert lib.sw_fe_create(p, pp) == lib.SW_E_PARAM
    assert lib.sw_fe_destroy(ffi.NULL) == lib.SW_OK


def test_events_helpers():
    a = Events(np.array([0, 2, 2], np.int64), np.array([1, 1], np.int32))
    b = Events(np.array([0, 1], np.int64), np.array([3], np.int32))
    c = Events.concat([a, Events.empty(), b])
    assert c.indptr.tolist() == [0, 2, 2, 3] and c.channels.tolist() == [1, 1, 3]
    assert c.n_steps == 3 and c.n_events == 3
    assert c.to_dense(4).tolist() == [[0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Events.concat([]).n_steps == 0
