"""The vectorised decision path (spikewire.decision.decide_offline_fast, segments,
select_segments) fires exactly the keywords of the streaming Decider.

Calibration sweeps score thousands of decision configs with the fast path, so a difference
would calibrate a rule the runtime does not run.  The reference is the real Decider fed the
same codes in random blocks and flushed.  Codes are random but smooth (long runs with dips),
so segments open, bridge gaps, reach max_steps and fire; each check also asserts that
keywords fired, so an always-empty result cannot pass.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spikewire.decision import Decider, DecisionConfig, decide_offline_fast, segments, select_segments

VOCAB = ["a", "b", "c"]


def _smooth_codes(rng, n_blocks=400, run=25, n_units=4):
    base = np.repeat(rng.integers(100, 256, (n_blocks, n_units)), run, axis=0)
    return np.clip(base + rng.integers(-6, 7, base.shape), 0, 255).astype(np.uint8)


def _decider_keywords(vocab, has_none, cfg, codes, splits=(), step_ms=1.0):
    """The streaming Decider fed ``codes`` in blocks of the ``splits`` sizes (then the rest), flushed."""
    d = Decider(vocab, has_none, cfg, step_ms=step_ms)
    out, t = [], 0
    for n in splits:
        out += d.update(codes[t:t + int(n)])
        t += int(n)
    return out + d.update(codes[t:]) + d.flush()


def test_fixed_configs_both_rules():
    rng = np.random.default_rng(7)
    codes = _smooth_codes(rng)
    for th, mg, ms, rf in [(160, 8, 3, 400), (200, 0, 1, 0), (140, 30, 20, 100), (250, 4, 5, 1000)]:
        cfg = DecisionConfig(threshold=th, margin=mg, min_steps=ms, refractory_ms=rf, rule="run")
        ref = _decider_keywords(VOCAB, True, cfg, codes)
        assert ref and decide_offline_fast(codes, VOCAB, True, cfg) == ref
    for th, hold, pk, mg, ms, rf, mx in [(160, 5, 200, 0, 3, 0, 60), (200, 0, 230, 4, 1, 100, 400),
                                         (140, 30, 150, 8, 20, 400, 50)]:
        cfg = DecisionConfig(threshold=th, hold_steps=hold, peak=pk, margin=mg, min_steps=ms, refractory_ms=rf,
                             max_steps=mx)
        ref = _decider_keywords(VOCAB, True, cfg, codes, splits=[7, 300, 1, 2000])
        assert len(ref) >= 3 and decide_offline_fast(codes, VOCAB, True, cfg) == ref


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), th=st.integers(120, 250), hold=st.integers(0, 40),
       peak=st.integers(100, 250), mg=st.integers(0, 12), ms=st.integers(1, 30), rf=st.integers(0, 300),
       max_steps=st.integers(30, 400), run=st.integers(1, 30), step_ms=st.sampled_from([1.0, 4.0]),
       has_none=st.booleans())
def test_segment_rule_equals_streaming_decider(seed, th, hold, peak, mg, ms, rf, max_steps, run, step_ms,
                                               has_none):
    rng = np.random.default_rng(seed)
    codes = _smooth_codes(rng, n_blocks=3000 // run, run=run, n_units=4 if has_none else 3)
    codes[rng.random(len(codes)) < 0.3] //= 2  # short dips: segments bridge them or not
    cfg = DecisionConfig(threshold=th, margin=mg, min_steps=min(ms, max_steps), refractory_ms=rf, peak=peak,
                         hold_steps=hold, max_steps=max_steps)
    ref = _decider_keywords(VOCAB, has_none, cfg, codes, rng.integers(1, 200, 40), step_ms)
    assert decide_offline_fast(codes, VOCAB, has_none, cfg, step_ms) == ref


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), th=st.integers(120, 250), mg=st.integers(0, 12), ms=st.integers(1, 30),
       rf=st.integers(0, 300), run=st.integers(1, 30), step_ms=st.sampled_from([1.0, 4.0]), has_none=st.booleans())
def test_run_rule_equals_streaming_decider(seed, th, mg, ms, rf, run, step_ms, has_none):
    rng = np.random.default_rng(seed)
    codes = _smooth_codes(rng, n_blocks=3000 // run, run=run, n_units=4 if has_none else 3)
    codes[rng.random(len(codes)) < 0.3] //= 2
    cfg = DecisionConfig(threshold=th, margin=mg, min_steps=ms, refractory_ms=rf, rule="run")
    ref = _decider_keywords(VOCAB, has_none, cfg, codes, rng.integers(1, 200, 40), step_ms)
    assert decide_offline_fast(codes, VOCAB, has_none, cfg, step_ms) == ref


def test_fast_paths_fire_on_the_property_inputs():
    """The property tests above compare lists; this pins that their kind of input does fire
    (several keywords) for both rules, so equal-and-empty is not what they check."""
    rng = np.random.default_rng(3)
    codes = _smooth_codes(rng, n_blocks=3000 // 10, run=10)
    codes[rng.random(len(codes)) < 0.3] //= 2
    seg = DecisionConfig(threshold=160, peak=200, margin=4, min_steps=3, refractory_ms=100, hold_steps=5,
                         max_steps=200)
    run = DecisionConfig(threshold=160, margin=4, min_steps=3, refractory_ms=100, rule="run")
    for cfg in (seg, run):
        ref = _decider_keywords(VOCAB, True, cfg, codes, rng.integers(1, 200, 40))
        assert len(ref) >= 3 and decide_offline_fast(codes, VOCAB, True, cfg) == ref


def test_segments_split_at_max_steps_and_bridge_holds():
    """Hand-made stream: active 0-9, a 3-step gap, active 13-14 (one segment with hold 3, two with
    hold 2), then a 50-step active stretch cut at max_steps=20."""
    c = np.zeros((120, 2), np.uint8)
    c[0:10, 0] = 200
    c[13:15, 0] = 210
    c[40:90, 0] = 220
    s3 = segments(c, 1, threshold=100, hold_steps=3, max_steps=20)
    assert s3["start"].tolist() == [0, 40, 60, 80] and s3["last"].tolist() == [14, 59, 79, 89]
    assert s3["decide"].tolist() == [18, 59, 79, 93]
    assert s3["max"][:, 0].tolist() == [210, 220, 220, 220]
    s2 = segments(c, 1, threshold=100, hold_steps=2, max_steps=20)
    assert s2["start"].tolist()[:2] == [0, 13] and s2["decide"].tolist()[:2] == [12, 17]
    cfg = DecisionConfig(threshold=100, peak=100, margin=0, min_steps=1, refractory_ms=0, hold_steps=3,
                         max_steps=20)
    fast = select_segments(s3, ["w"], cfg, 1.0)
    assert [k.step for k in fast] == [18, 59, 79, 93]
    assert fast == _decider_keywords(["w"], True, cfg, c, [5, 50, 3])


def test_stream_end_and_empty_input():
    cfg = DecisionConfig(threshold=100, peak=100, margin=0, min_steps=1, refractory_ms=0, hold_steps=30)
    c = np.zeros((50, 4), np.uint8)
    c[40:, 1] = 250  # still open when the stream ends: decided at the last step, like flush()
    kws = decide_offline_fast(c, VOCAB, True, cfg)
    assert [(k.word, k.step) for k in kws] == [("b", 49)] and kws == _decider_keywords(VOCAB, True, cfg, c)
    empty = np.zeros((0, 4), np.uint8)
    for rule in ("segment", "run"):
        assert decide_offline_fast(empty, VOCAB, True, DecisionConfig(rule=rule)) == []
    assert segments(empty, 3, 100, 3, 20)["max"].shape == (0, 4)


def test_bad_codes_are_clear_errors():
    cfg = DecisionConfig()
    with pytest.raises(ValueError, match=r"cadc must be \[T x 4\]"):
        decide_offline_fast(np.zeros((10, 3), np.uint8), VOCAB, True, cfg)
    with pytest.raises(TypeError, match="uint8"):
        decide_offline_fast(np.zeros((10, 4), np.int16), VOCAB, True, cfg)
    with pytest.raises(ValueError, match="cadc must be"):
        segments(np.zeros(10, np.uint8), 3, 100, 3, 20)
    with pytest.raises(ValueError, match="n_words"):
        segments(np.zeros((10, 2), np.uint8), 3, 100, 3, 20)


@pytest.mark.parametrize("rule", ["segment", "run"])
def test_runtime_sized_blocks_equal_one_call(rule):
    """Blocks of 1-3 steps (the runtime's 10 ms) are decided on Python ints, long ones with numpy
    first (decision._SMALL_BLOCK): any split gives the keywords and the stretches of one call, and
    of decide_offline_fast."""
    from spikewire.decision import _SMALL_BLOCK

    rng = np.random.default_rng(11)
    for has_none in (True, False):
        codes = _smooth_codes(rng, n_blocks=200, run=10, n_units=4 if has_none else 3)  # < 256 stretches
        codes[rng.random(len(codes)) < 0.3] //= 2
        cfg = DecisionConfig(threshold=160, peak=200, margin=4, min_steps=3, refractory_ms=100, hold_steps=5,
                             max_steps=200, rule=rule)
        results = []
        for sizes in ([len(codes)], rng.integers(1, 4, len(codes)), rng.integers(_SMALL_BLOCK - 2, _SMALL_BLOCK + 3,
                                                                                   len(codes))):
            d = Decider(VOCAB, has_none, cfg, step_ms=4.0)
            kws, stretches, t = [], [], 0
            for n in sizes:
                if t >= len(codes):
                    break
                kws += d.update(codes[t:t + int(n)])
                stretches += d.take_stretches()
                t += int(n)
            kws += d.flush()
            results.append((kws, stretches + d.take_stretches()))
        assert len(results[0][0]) >= 3 and Decider.MAX_STRETCHES > len(results[0][1]) > len(results[0][0])
        assert results[1] == results[0] and results[2] == results[0]
        assert decide_offline_fast(codes, VOCAB, has_none, cfg, 4.0) == results[0][0]
