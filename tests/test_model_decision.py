"""Typed model files (schema v1) and the keyword decision rules."""
from __future__ import annotations

import numpy as np
import pytest

from spikewire.config import Chip, CoreConfig, fixed_params
from spikewire.decision import Decider, DecisionConfig, classify, classify_scores
from spikewire.frontend import FrontEndConfig
from spikewire.model import Model, ModelFileError, load, resolve
from spikewire.modelfile import load_container, save_container

WORDS = ["yes", "no", "up"]


def tiny_model(**kw) -> Model:
    fe = FrontEndConfig(n_channels=16)
    cfg = CoreConfig(n_in=16, n_hid=8, n_out=4, preset="bss2")
    rng = np.random.default_rng(0)
    weights = {"in": rng.integers(-63, 64, (16, 8)).astype(np.int8),
               "rec": rng.integers(-63, 64, (8, 8)).astype(np.int8),
               "out": rng.integers(-63, 64, (8, 4)).astype(np.int8)}
    args = dict(name="tiny", vocabulary=WORDS, has_none_unit=True, frontend=fe, core=cfg,
                params=fixed_params(cfg), weights=weights, decision=DecisionConfig(threshold=150),
                training={"seed": 1}, metrics={"accuracy": 0.5})
    args.update(kw)
    return Model(**args)


def test_model_round_trip(tmp_path):
    m = tiny_model()
    m.save(tmp_path / "m.swm")
    m2 = load(tmp_path / "m.swm")
    assert m2.name == "tiny" and m2.vocabulary == WORDS and m2.labels == WORDS + ["_none"]
    assert m2.frontend == m.frontend and m2.core == m.core and m2.decision == m.decision
    assert m2.training == {"seed": 1} and m2.metrics == {"accuracy": 0.5}
    for k in ("in", "rec", "out"):
        assert np.array_equal(m2.weights[k], m.weights[k])
    # the loaded model runs the same on the core as the original
    ev = np.random.default_rng(1).random((50, 16)) < 0.2
    a = m.make_core().run(ev)
    b = m2.make_core().run(ev)
    assert np.array_equal(a.cadc, b.cadc) and a.n_spikes == b.n_spikes
    # a chip applies mismatch on top of the stored integers
    c = m2.make_core(Chip(seed=3, threshold=0.2))
    assert not np.array_equal(c.params[0].v_th, m2.params[0].v_th)


def test_model_validation():
    with pytest.raises(ValueError, match="readout units"):
        tiny_model(vocabulary=["a", "b"])
    with pytest.raises(ValueError, match="reserved"):
        tiny_model(vocabulary=["a", "b", "_none"])
    m = tiny_model()
    bad = dict(m.weights, out=np.full((8, 4), 64, np.int8))
    with pytest.raises(ValueError, match="outside -63..63"):
        tiny_model(weights=bad)
    with pytest.raises(ValueError, match="n_in=16"):
        tiny_model(frontend=FrontEndConfig(n_channels=32))
    with pytest.raises(ValueError, match="dt_ms"):  # time constants would mean something else
        tiny_model(frontend=FrontEndConfig(n_channels=16, step_ms=4.0))
    with pytest.raises(ValueError, match="threshold"):
        DecisionConfig(threshold=300)


def test_corrupt_or_foreign_model_files(tmp_path):
    m = tiny_model()
    p = tmp_path / "m.swm"
    m.save(p)
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 1
    (tmp_path / "flip.swm").write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match="checksum"):
        load(tmp_path / "flip.swm")
    (tmp_path / "trunc.swm").write_bytes(p.read_bytes()[:100])
    with pytest.raises(ModelFileError):
        load(tmp_path / "trunc.swm")
    # a valid container that is not a model
    save_container(tmp_path / "other.swm", {"schema_version": 1, "kind": "something"}, {})
    with pytest.raises(ModelFileError, match="not a spikewire model"):
        load(tmp_path / "other.swm")
    # a model with a missing array
    header, arrays = load_container(p)
    del arrays["w_rec"]
    save_container(tmp_path / "miss.swm", header, arrays)
    with pytest.raises(ModelFileError, match="w_rec"):
        load(tmp_path / "miss.swm")
    # a future schema
    save_container(tmp_path / "future.swm", dict(header, schema_version=99), arrays)
    with pytest.raises(ModelFileError, match="schema version 99"):
        load(tmp_path / "future.swm")
    # a bad decision rule or segment parameter in the header
    header, arrays = load_container(p)
    for bad, message in (({"rule": "vote"}, "decision rule must be"), ({"rule": "segment", "peak": 300}, "peak"),
                         ({"hold_steps": "25"}, "hold_steps")):
        save_container(tmp_path / "dec.swm", dict(header, decision={**header["decision"], **bad}), arrays)
        with pytest.raises(ModelFileError, match=message):
            load(tmp_path / "dec.swm")


def test_resolve(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model 'nonexistent'"):
        resolve("nonexistent")
    tiny_model().save(tmp_path / "x.swm")
    assert resolve(tmp_path) == tmp_path / "x.swm"
    assert resolve(str(tmp_path / "x.swm")) == tmp_path / "x.swm"


# ---------------------------------------------------------------------------
# decisions

def codes(rows):
    return np.array(rows, dtype=np.uint8)


def test_run_rule_fires_after_min_steps_with_margin_and_refractory():
    cfg = DecisionConfig(threshold=100, margin=10, min_steps=3, refractory_ms=5, rule="run")
    d = Decider(WORDS, True, cfg)
    c = np.zeros((30, 4), np.uint8)
    c[2:8, 1] = 200          # "no" evidenced at steps 2..7
    c[4, 3] = 195            # step 4: none unit too close (margin) -> breaks the run
    c[12:20, 0] = 150        # "yes" at 12..19, but refractory ends at 5+5=10 -> fires at 14
    c[22:24, 2] = 250        # too short for min_steps
    ev = d.update(c, 0)
    assert [k.word for k in ev] == ["no", "yes"]
    assert ev[0].step == 7 and ev[0].t_start == pytest.approx(0.005)  # run restarted at 5
    assert ev[1].step == 14 and ev[1].t_start == pytest.approx(0.012)
    assert ev[0].score == pytest.approx(200 / 255)


def test_run_rule_run_maturing_in_refractory_fires_when_it_ends():
    cfg = DecisionConfig(threshold=100, margin=10, min_steps=3, refractory_ms=100, rule="run")
    c = np.zeros((1000, 4), np.uint8)
    c[0:5, 0] = 200      # "yes" fires at step 2
    c[50:900, 1] = 200   # "no": long evidence starting inside the refractory window
    ev = Decider(WORDS, True, cfg).update(c, 0)
    assert [(k.word, k.step) for k in ev] == [("yes", 2), ("no", 103)]  # once, right after 2 + 100
    assert ev[1].t_start == pytest.approx(0.050)


def test_run_rule_is_block_invariant():
    rng = np.random.default_rng(0)
    c = (rng.random((2000, 4)) * 255).astype(np.uint8)
    c[rng.random(2000) < 0.6, 1] = 250
    cfg = DecisionConfig(threshold=200, margin=5, min_steps=2, refractory_ms=50, rule="run")
    whole = Decider(WORDS, True, cfg).update(c, 0)
    d = Decider(WORDS, True, cfg)
    parts, t = [], 0
    for n in rng.integers(1, 97, 100):
        parts += d.update(c[t:t + n])
        t += n
    parts += d.update(c[t:])
    assert whole and parts == whole


def test_run_rule_bad_input_and_gaps():
    d = Decider(WORDS, True, DecisionConfig(threshold=100, margin=0, min_steps=2, refractory_ms=0, rule="run"))
    with pytest.raises(ValueError, match="4"):
        d.update(np.zeros((3, 3), np.uint8))
    with pytest.raises(TypeError, match="uint8"):
        d.update(np.zeros((3, 4), np.float32))
    d.update(codes([[200, 0, 0, 0]]), 0)
    with pytest.raises(ValueError, match="before the end"):
        d.update(codes([[200, 0, 0, 0]]), 0)
    # a gap in steps breaks an evidence run
    assert d.update(codes([[200, 0, 0, 0]]), 5) == []
    assert [k.step for k in d.update(codes([[200, 0, 0, 0]]))] == [6]


def seg_cfg(**kw):
    args = dict(threshold=100, peak=150, margin=10, min_steps=3, refractory_ms=0, hold_steps=2, max_steps=50)
    args.update(kw)
    return DecisionConfig(**args)


def test_segment_rule_decides_each_stretch_by_its_peak():
    c = np.zeros((60, 4), np.uint8)
    c[2:6, 1] = 120          # "no" leads first ...
    c[4:10, 0] = 110
    c[7, 0] = 200            # ... but "yes" has the highest peak of the segment
    # 10, 11 inactive (hold 2 bridges them), 12 active again: same segment
    c[12, 0] = 105
    # 13, 14, 15 inactive: decided at 15 (= last active 12 + hold 2 + 1)
    c[20:30, 2] = 240        # "up", but the none unit peaks within the margin
    c[25, 3] = 235
    c[40:42, 1] = 250        # too short (min_steps 3)
    ev = Decider(WORDS, True, seg_cfg()).update(c, 0)
    assert [(k.word, k.step) for k in ev] == [("yes", 15)]
    assert ev[0].t_start == pytest.approx(0.002) and ev[0].t_end == pytest.approx(0.015)
    assert ev[0].score == pytest.approx(200 / 255)
    # without the margin the "up" segment fires at 29 + 2 + 1; the short one still does not
    ev = Decider(WORDS, True, seg_cfg(margin=0)).update(c, 0)
    assert [(k.word, k.step) for k in ev] == [("yes", 15), ("up", 32)]
    # a peak the winner does not reach: nothing
    assert Decider(WORDS, True, seg_cfg(peak=241, margin=0)).update(c, 0) == []
    # hold 0: the dip at 10-11 splits the first stretch; the first part fires at 10
    ev = Decider(WORDS, True, seg_cfg(hold_steps=0, margin=0)).update(c, 0)
    assert [(k.word, k.step) for k in ev] == [("yes", 10), ("up", 30)]  # 12 alone is too short


def test_segment_rule_none_unit_counts_until_the_decision_but_opens_nothing():
    """An unknown word: a word unit leads briefly, then the "no keyword" unit peaks during the
    hold time.  The segment's evidence runs to the decision step, so the none unit wins it."""
    c = np.zeros((60, 4), np.uint8)
    c[2:10, 0] = 170         # "yes" active for 8 steps (peak 170 >= 150): decided at 9 + 2 + 1 = 12
    c[10:13, 3] = 220        # the none unit peaks in the hold time
    cfg = seg_cfg(margin=0)
    assert Decider(WORDS, True, cfg).update(c, 0) == []
    c[12, 3] = 0             # ... but a none peak after the decision step is not seen
    c[10:12, 3] = 0
    c[13:20, 3] = 220
    assert [(k.word, k.step) for k in Decider(WORDS, True, cfg).update(c, 0)] == [("yes", 12)]


def test_segment_rule_background_noise_does_not_hold_segments_open():
    """Noise keeps the "no keyword" unit high for minutes; it must neither open segments nor
    keep them open (when it did, segments ran to max_steps and keywords came late: false alarms)."""
    c = np.zeros((400, 4), np.uint8)
    c[:, 3] = 200            # the none unit, all the time
    c[100:120, 1] = 230      # a word above the noise
    ev = Decider(WORDS, True, seg_cfg(margin=0, max_steps=300)).update(c, 0)
    assert [(k.word, k.step) for k in ev] == [("no", 122)]  # decided 2 + 1 steps after the word


def test_segment_rule_max_steps_refractory_and_flush():
    c = np.zeros((300, 4), np.uint8)
    c[0:250, 0] = 200        # one long word: decided at max_steps, then again
    ev = Decider(WORDS, True, seg_cfg(max_steps=100)).update(c, 0)
    assert [(k.word, k.step, k.t_start) for k in ev] == [("yes", 99, 0.0), ("yes", 199, pytest.approx(0.1)),
                                                         ("yes", 252, pytest.approx(0.2))]
    # a refractory time of 150 steps suppresses the second decision, not the third
    ev = Decider(WORDS, True, seg_cfg(max_steps=100, refractory_ms=150)).update(c, 0)
    assert [k.step for k in ev] == [99, 252]
    # a stream that ends inside a segment: flush decides it at the last step
    d = Decider(WORDS, True, seg_cfg())
    assert d.update(c[:20], 0) == []
    assert [(k.word, k.step) for k in d.flush()] == [("yes", 19)]
    assert d.flush() == []   # nothing left open


def test_segment_rule_gap_decides_open_segment():
    d = Decider(WORDS, True, seg_cfg(hold_steps=5))
    c = np.zeros((10, 4), np.uint8)
    c[:, 2] = 180
    assert d.update(c, 0) == []                   # still open at step 9
    out = d.update(np.zeros((3, 4), np.uint8), 20)  # steps 10..19 were dropped
    assert [(k.word, k.step) for k in out] == [("up", 9)]


def test_segment_rule_is_block_invariant():
    rng = np.random.default_rng(3)
    c = np.repeat((rng.random((200, 4)) * 255).astype(np.uint8), 10, axis=0)
    cfg = seg_cfg(threshold=150, peak=180, margin=5, hold_steps=4, max_steps=60, refractory_ms=20)
    d = Decider(WORDS, True, cfg)
    whole = d.update(c, 0) + d.flush()
    d = Decider(WORDS, True, cfg)
    parts, t = [], 0
    for n in rng.integers(1, 97, 30):
        parts += d.update(c[t:t + n])
        t += n
    parts += d.update(c[t:]) + d.flush()
    assert len(whole) > 5 and parts == whole


def test_decision_config_rules_and_old_files():
    assert DecisionConfig().rule == "segment"
    # files written before the segment rule had no "rule" key and meant the run rule
    old = {"threshold": 40, "margin": 0, "min_steps": 50, "refractory_ms": 400, "offline_reject": True}
    assert DecisionConfig.from_dict(old).rule == "run"
    assert DecisionConfig.from_dict({**old, "rule": "segment"}).rule == "segment"
    with pytest.raises(ValueError, match="rule"):
        DecisionConfig(rule="vote")
    with pytest.raises(ValueError, match="no segment could ever fire"):
        DecisionConfig(min_steps=20, max_steps=10)
    with pytest.raises(ValueError, match="peak"):
        DecisionConfig(peak=256)
    with pytest.raises(ValueError, match="hold_steps"):
        DecisionConfig(hold_steps=-1)
    with pytest.raises(ValueError, match="offline_reject"):
        DecisionConfig(offline_reject="yes")
    with pytest.raises(ValueError, match="unknown decision keys"):
        DecisionConfig.from_dict({**old, "window": 3})



def test_decision_does_not_import_model():
    """DecisionConfig lives in decision.py; decision never imports model (no cycle), and the old
    import path spikewire.model.DecisionConfig is the same class."""
    import subprocess
    import sys

    code = ("import sys; import spikewire.decision as d; "
            "print(d.DecisionConfig.__module__, 'spikewire.model' in sys.modules)")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["spikewire.decision", "False"]
    import spikewire
    import spikewire.model

    assert spikewire.model.DecisionConfig is DecisionConfig is spikewire.DecisionConfig

def test_classify_offline():
    cfg = DecisionConfig(threshold=100)
    c = np.zeros((10, 4), np.uint8)
    c[3, 2] = 180
    c[5, 0] = 120
    assert classify(c, 3, True, cfg)[0] == 2
    c[7, 3] = 200  # none unit wins -> rejected
    assert classify(c, 3, True, cfg)[0] is None
    assert classify(c, 3, True, DecisionConfig(threshold=100, offline_reject=False))[0] == 2
    assert classify(np.full((5, 4), 50, np.uint8), 3, True, cfg)[0] is None  # below threshold
    with pytest.raises(ValueError):
        classify(np.zeros((5, 3), np.uint8), 3, True, cfg)


@pytest.mark.parametrize("has_none_unit", [True, False])
@pytest.mark.parametrize("offline_reject", [True, False])
def test_classify_scores_is_the_offline_rule_row_by_row(has_none_unit, offline_reject):
    """classify_scores (many files at once: calibration, export, in-the-loop evaluation) against the
    rule written out per file, with ties (few distinct codes) and every threshold side."""
    rng = np.random.default_rng(3)
    n_words = 4
    scores = rng.choice(np.array([0, 90, 100, 101, 180, 255], np.uint8), (3000, n_words + int(has_none_unit)))
    for thr in (0, 100, 101, 255):
        got = classify_scores(scores, n_words, has_none_unit, thr, offline_reject)
        want = []
        for row in scores.tolist():
            w = row[:n_words].index(max(row[:n_words]))  # the first word of the highest code
            rejected = row[w] < thr or (has_none_unit and offline_reject and row[n_words] > row[w])
            want.append(-1 if rejected else w)
        assert got.tolist() == want
        cfg = DecisionConfig(threshold=thr, offline_reject=offline_reject)
        one = [classify(r[None, :], n_words, has_none_unit, cfg)[0] for r in scores[:200]]
        assert [-1 if w is None else w for w in one] == want[:200]
    with pytest.raises(ValueError):
        classify_scores(scores[:, :2], n_words, has_none_unit, 100)


# ---------------------------------------------------------------------------
# stretch ids (on-line learning: a user names a stretch by its id)

def test_segment_rule_stretches_have_ids_and_reasons_and_keywords_carry_them():
    c = np.zeros((60, 4), np.uint8)
    c[2:10, 0] = 200         # "yes": fires (decided at 12)
    c[20:30, 2] = 240        # "up", the none unit within the margin: rejected (margin)
    c[25, 3] = 235
    c[40:42, 1] = 250        # too short: rejected (short)
    d = Decider(WORDS, True, seg_cfg())
    ev = d.update(c, 0) + d.flush()
    st = d.take_stretches()
    assert [s.id for s in st] == [0, 1, 2]
    assert [(s.fired, s.reason, WORDS[s.unit]) for s in st] == [(True, None, "yes"), (False, "margin", "up"),
                                                                (False, "short", "no")]
    assert [k.stretch for k in ev] == [0] and ev[0].to_dict()["stretch"] == 0
    assert (st[0].start, st[0].end, st[0].code) == (2, ev[0].step, 200)
    assert d.take_stretches() == []
    # refractory and peak
    d = Decider(WORDS, True, seg_cfg(refractory_ms=30))
    c2 = np.zeros((60, 4), np.uint8)
    c2[2:8, 0] = 200
    c2[14:20, 1] = 200       # decided at 22: within 30 steps of the keyword at 10
    c2[40:46, 2] = 140       # below peak 150
    d.update(c2, 0)
    d.flush()
    assert [(s.fired, s.reason) for s in d.take_stretches()] == [(True, None), (False, "refractory"), (False, "peak")]


def test_run_rule_keyword_carries_the_id_its_stretch_gets_when_the_run_ends():
    cfg = DecisionConfig(threshold=100, margin=10, min_steps=3, refractory_ms=100, rule="run")
    d = Decider(WORDS, True, cfg)
    c = np.zeros((200, 4), np.uint8)
    c[2:40, 1] = 200         # "no" fires at step 4; its run (its stretch) ends at 39
    c[60:70, 0] = 200        # "yes": inside the refractory time: a rejected stretch
    c[100:101, 2] = 200      # too short: no stretch at all
    ev = d.update(c[:20], 0)
    assert [(k.word, k.stretch) for k in ev] == [("no", 0)] and d.take_stretches() == []   # still running
    ev += d.update(c[20:], 20)
    st = d.take_stretches()
    assert [(s.id, s.start, s.end, WORDS[s.unit], s.fired, s.reason) for s in st] == [
        (0, 2, 39, "no", True, None), (1, 60, 69, "yes", False, "refractory")]
    assert [k.word for k in ev] == ["no"] and st[1].code == 200


def test_stretch_ids_are_unique_across_deciders_sharing_a_counter():
    import itertools

    ids = itertools.count()
    c = np.zeros((30, 4), np.uint8)
    c[2:10, 0] = 200
    out = []
    for _ in range(3):       # a reload makes a new decider; the ids go on
        d = Decider(WORDS, True, seg_cfg(), ids=ids)
        out += [k.stretch for k in d.update(c, 0) + d.flush()]
    assert out == [0, 1, 2]
    # the id does not take part in keyword equality (decide_offline_fast gives none)
    a = Decider(WORDS, True, seg_cfg()).update(c, 0)
    b = Decider(WORDS, True, seg_cfg(), ids=itertools.count(7)).update(c, 0)
    assert a == b and a[0].stretch == 0 and b[0].stretch == 7
