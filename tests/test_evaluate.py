"""Tests for tools/evaluate.py and ``spikewire eval`` on tiny hand-built models.

The model: 16 front-end channels, hidden neuron j copies input channel j, the
readout unit "low" listens to channels 0-4 (a 250 Hz tone), "high" to 11-15
(3 kHz) and the "no keyword" unit to 6-9 (1.3 kHz, our "unknown word").
No torch, no shared data.
"""
from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from spikewire.audio import write_wav
from spikewire.cli import main
from spikewire.config import CoreConfig, fixed_params
from spikewire.decision import DecisionConfig, Keyword, decide_offline_fast
from spikewire.frontend import FrontEndConfig
from spikewire.model import Model
from spikewire.tools import evaluate as ev
from spikewire.tools.datasets import wav_folder

RATE = 8000
FREQ = {"low": 250.0, "high": 3000.0, "mid": 1300.0}


def tiny_model(**decision) -> Model:
    fe = FrontEndConfig(n_channels=16)
    cc = CoreConfig(n_in=16, n_hid=16, n_out=3, shift_in=8, shift_out=6)
    hid, out = fixed_params(cc)
    w_in = np.zeros((16, 16), np.int8)
    np.fill_diagonal(w_in, 63)
    w_out = np.zeros((16, 3), np.int8)
    w_out[0:5, 0] = 40
    w_out[11:16, 1] = 40
    w_out[6:10, 2] = 30
    dec = dict(threshold=160, margin=8, min_steps=3, refractory_ms=400)
    dec.update(decision)
    return Model("tiny", ["low", "high"], True, fe, cc, (hid, out),
                 {"in": w_in, "rec": np.zeros((16, 16), np.int8), "out": w_out}, DecisionConfig(**dec))


def tone(freq: float | None, dur: float = 0.4, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(dur * RATE)) / RATE
    x = np.zeros_like(t) if freq is None else amp * np.sin(2 * np.pi * freq * t)
    pad = np.zeros(int(0.1 * RATE))
    return np.concatenate([pad, x, pad]).astype(np.float32)


# name -> sound.  Test split (index 0-4): 6 known-word files, 2 unknown.
FILES = {
    "low_alice_0": "low", "low_bob_1": "low", "high_alice_0": "high", "high_bob_1": "high",
    "low_bob_3": "high",        # mislabelled: predicted high -> confusion[low][high]
    "high_alice_4": None,       # silence: rejected
    "mid_alice_2": "mid",       # unknown word, correctly rejected
    "mid_bob_0": "low",         # unknown word that sounds like "low": a false accept
    "low_alice_5": "low", "high_bob_7": "high",  # train split
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("wavs")
    for name, sound in FILES.items():
        write_wav(root / f"{name}.wav", tone(None if sound is None else FREQ[sound]), RATE)
    return root


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Correctly labelled tones for streaming: 3 per word in each split."""
    root = tmp_path_factory.mktemp("clean")
    for word in ("low", "high"):
        for i in (0, 1, 2, 5, 6, 7):
            write_wav(root / f"{word}_sp{i % 2}_{i}.wav", tone(FREQ[word], dur=0.3 + 0.05 * i), RATE)
    return root


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("model") / "tiny.swm"
    tiny_model().save(p)
    return p


# --- offline --------------------------------------------------------------

def test_offline_metrics_known_answers(data):
    m = tiny_model()
    utts = ev.find_utterances(data, m.vocabulary, "test")
    rep, results, _ = ev.evaluate_offline(m, utts)
    assert rep["n"] == 6 and rep["n_correct"] == 4
    assert rep["accuracy"] == pytest.approx(4 / 6)
    assert rep["labels"] == ["low", "high"] and rep["confusion_columns"] == ["low", "high", "rejected"]
    assert rep["confusion"] == [[2, 1, 0], [0, 2, 1]]
    assert rep["per_class_recall"] == {"low": pytest.approx(2 / 3), "high": pytest.approx(2 / 3)}
    assert rep["rejected"] == 1
    assert rep["n_unknown"] == 2 and rep["n_false_accept"] == 1 and rep["false_accept_rate"] == 0.5
    by = {r.path.split("/")[-1]: r for r in results}
    assert by["mid_alice_2.wav"].predicted is None and by["mid_bob_0.wav"].predicted == "low"
    # scores are the per-unit maxima: the none unit wins on the 1.3 kHz tone
    s = by["mid_alice_2.wav"].scores
    assert s[2] > max(s[:2])


def test_offline_metrics_by_hand():
    r = lambda lab, pred, known=True, sp="a": ev.FileResult("x", lab, known, sp, pred, (0, 0, 0))  # noqa: E731
    res = [r("low", "low"), r("low", None), r("high", "low"), r("high", "high"), r("high", "high"),
           r("mid", None, False), r("mid", None, False, "b")]
    m = ev.offline_metrics(res, ["low", "high"])
    assert m["confusion"] == [[1, 0, 1], [1, 2, 0]]
    assert m["accuracy"] == pytest.approx(3 / 5) and m["rejected"] == 1
    assert m["false_accept_rate"] == 0.0 and m["n_unknown"] == 2
    none = ev.offline_metrics([r("low", "low")], ["low", "high"])
    assert none["false_accept_rate"] is None and none["per_class_recall"]["high"] is None
    per = ev.per_speaker_metrics(res, ["low", "high"])
    assert per["a"]["accuracy"] == pytest.approx(3 / 5) and per["b"]["n"] == 0 and per["b"]["accuracy"] is None


def test_reclassify_matches_a_rerun(data):
    m = tiny_model()
    utts = ev.find_utterances(data, m.vocabulary, "all")
    res, _ = ev.evaluate_files(m, utts)
    strict = dataclasses.replace(m.decision, threshold=250)
    again, _ = ev.evaluate_files(dataclasses.replace(m, decision=strict), utts)
    assert ev.reclassify(res, m, strict) == again
    assert all(r.predicted is None for r in again)


def test_speaker_selection_and_leave_one_out(data):
    m = tiny_model()
    utts = ev.find_utterances(data, m.vocabulary, "test", speakers=["bob"])
    assert {u.speaker for u in utts} == {"bob"}
    loso = ev.leave_one_speaker_out(ev.find_utterances(data, m.vocabulary, "test"), lambda s: m)
    assert set(loso["per_speaker"]) == {"alice", "bob"}
    # alice: low_0, high_0 right, high_4 rejected; bob: low_1, high_1 right, low_3 wrong
    assert loso["per_speaker"]["alice"]["accuracy"] == pytest.approx(2 / 3)
    assert loso["per_speaker"]["bob"]["accuracy"] == pytest.approx(2 / 3)
    assert loso["mean_accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ev.EvalError, match="unknown speaker"):
        ev.find_utterances(data, m.vocabulary, "test", speakers=["carol"])


def test_find_utterances_errors(tmp_path, data):
    with pytest.raises(ev.EvalError, match="does not exist"):
        ev.find_utterances(tmp_path / "nope", ["low"])
    with pytest.raises(ev.EvalError, match="no .wav files"):
        ev.find_utterances(tmp_path, ["low"])
    (tmp_path / "low").mkdir()
    write_wav(tmp_path / "low" / "a.wav", tone(250), RATE)
    with pytest.raises(ev.EvalError, match="FSDD-style"):
        ev.find_utterances(tmp_path, ["low"], "test")
    assert len(ev.find_utterances(tmp_path, ["low"], "all")) == 1


def test_fsdd_layout_uses_recordings(tmp_path):
    rec = tmp_path / "recordings"
    rec.mkdir()
    write_wav(rec / "3_george_0.wav", tone(250), RATE)
    write_wav(rec / "3_george_9.wav", tone(250), RATE)
    u = ev.find_utterances(tmp_path, ["three"], "test")
    assert [(x.label, x.index, x.known) for x in u] == [("three", 0, True)]


# --- streaming: scoring ----------------------------------------------------

def kw(word, t):
    return Keyword(word, 0.9, t - 0.05, t, int(t * 1000))


SEGS = [ev.Segment(1.0, 1.5, "low", True), ev.Segment(2.0, 2.4, "high", True),
        ev.Segment(5.0, 5.5, "low", True), ev.Segment(8.0, 8.5, "mid", False)]


def test_score_stream_hand_made():
    kws = [kw("low", 1.2),     # hit (utt 0)
           kw("high", 1.95),   # inside window 0 (end 1.5 + 0.5 clipped to 2.0): wrong word for utt 0
           kw("high", 2.9),    # utt 1 window is [2.0, 2.9): at its end -> outside -> false alarm
           kw("low", 0.5),     # before everything: false alarm
           kw("high", 5.6),    # wrong word for utt 2 (no hit there)
           kw("low", 8.2),     # in the unknown word's window: false accept
           kw("low", 20.0)]    # false alarm
    s = ev.score_stream(kws, SEGS, duration_s=36.0, tolerance_s=0.5)
    assert (s["n_utterances"], s["n_hits"], s["n_wrong_word"], s["n_missed"]) == (3, 1, 2, 1)
    assert s["n_false_alarms"] == 3 and s["false_alarms_per_hour"] == pytest.approx(300.0)
    assert s["n_unknown"] == 1 and s["n_false_accept"] == 1 and s["false_accept_rate"] == 1.0
    assert s["hit_rate"] == pytest.approx(1 / 3) and s["wrong_word_rate"] == pytest.approx(2 / 3)
    assert s["audio_hours"] == pytest.approx(0.01) and s["n_keywords"] == 7
    assert s["n_extra_in_window"] == 1
    assert s["hit_delay_s_median"] == pytest.approx(1.2 - 1.5)


def test_score_stream_tolerance_and_merge():
    s = ev.score_stream([kw("low", 1.99)], SEGS[:1], 3600.0, tolerance_s=0.5)
    assert s["n_hits"] == 1 and s["n_false_alarms"] == 0
    s2 = ev.score_stream([kw("low", 2.01)], SEGS[:1], 3600.0, tolerance_s=0.5)
    assert s2["n_hits"] == 0 and s2["n_missed"] == 1 and s2["false_alarms_per_hour"] == 1.0
    m = ev.merge_scores([s, s2])
    assert m["hit_rate"] == 0.5 and m["false_alarms_per_hour"] == 0.5 and m["audio_hours"] == 2.0
    assert m["false_accept_rate"] is None
    empty = ev.score_stream([], [], 0.0)
    assert empty["hit_rate"] is None and empty["false_alarms_per_hour"] is None


# --- streaming: the stream and the run ---------------------------------------

def test_build_stream_is_seeded(clean):
    utts = wav_folder(clean, ["low", "high"])
    a = ev.build_stream(utts, seed=3)
    b = ev.build_stream(utts, seed=3)
    c = ev.build_stream(utts, seed=4)
    assert np.array_equal(a.samples, b.samples) and a.segments == b.segments
    assert not np.array_equal(a.samples, c.samples[:len(a.samples)]) or a.segments != c.segments
    assert sorted(s.path for s in a.segments) == sorted(str(u.path) for u in utts)
    gaps = [a.segments[0].start_s] + [y.start_s - x.end_s for x, y in zip(a.segments, a.segments[1:])] \
        + [a.duration_s - a.segments[-1].end_s]
    assert all(0.3 - 1e-3 <= g <= 2.0 + 1e-3 for g in gaps)
    assert a.rate == RATE and np.abs(a.samples).max() <= 1.0
    quiet = a.samples[: int(a.segments[0].start_s * RATE)]
    assert 20 * np.log10(np.sqrt(np.mean(quiet.astype(np.float64) ** 2))) == pytest.approx(-50, abs=3)
    silent = ev.build_stream(utts, seed=3, noise_db=None)
    assert not silent.samples[: int(silent.segments[0].start_s * RATE)].any()


def test_make_noise_levels():
    rng = np.random.default_rng(0)
    for kind in ("white", "pink"):
        x = ev.make_noise(40000, kind, -40.0, rng)
        assert 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2))) == pytest.approx(-40, abs=0.1)
    with pytest.raises(ev.EvalError):
        ev.make_noise(10, "brown", -40.0, rng)


def test_run_stream_hits_and_block_invariance(clean):
    m = tiny_model()
    utts = ev.find_utterances(clean, m.vocabulary, "test")
    s = ev.build_stream(utts, seed=1)
    kws, cadc = ev.run_stream(m, s, block_ms=10)
    sc = ev.score_stream(kws, s.segments, s.duration_s)
    assert sc["n_utterances"] == 6 and sc["hit_rate"] == 1.0 and sc["n_wrong_word"] == 0
    assert sc["n_false_alarms"] == 0
    assert cadc.shape == (int(np.ceil(s.duration_s * 1000)), 3)
    kws2, cadc2 = ev.run_stream(m, s, block_ms=37)
    assert kws2 == kws and np.array_equal(cadc2, cadc)
    # the exact fast decider used by the sweep gives the same keywords (more: test_decision_fast.py)
    assert decide_offline_fast(cadc, m.vocabulary, True, m.decision) == kws


def test_evaluate_stream_repeat(clean):
    m = tiny_model()
    utts = ev.find_utterances(clean, m.vocabulary, "test")
    r = ev.evaluate_stream(m, utts, seed=5, repeat=2)
    assert len(r["runs"]) == 2 and [x["seed"] for x in r["runs"]] == [5, 6]
    assert r["n_utterances"] == 12 and r["hit_rate"] == 1.0
    assert r["audio_hours"] == pytest.approx(sum(x["audio_hours"] for x in r["runs"]))
    json.dumps(r, allow_nan=False)


# --- calibration --------------------------------------------------------------

def test_choose_operating_point():
    rows = [dict(threshold=t, margin=0, min_steps=1, hit_rate=h, wrong_word_rate=w, false_alarms_per_hour=f)
            for t, h, w, f in [(140, 1.0, 0.0, 5.0), (150, 0.9, 0.1, 1.0), (160, 0.9, 0.0, 2.0), (170, 0.5, 0, 0.0),
                               (180, 0.95, 0.2, 0.0)]]
    best, ok = ev.choose_operating_point(rows, 2.0)
    assert ok and best["threshold"] == 160  # 180 hits more but says the wrong word more: net 0.75 < 0.9
    best, ok = ev.choose_operating_point(rows[:1], 2.0)
    assert not ok and best["threshold"] == 140


def test_calibrate_writes_model_and_refuses_test(clean, tmp_path):
    m = tiny_model(threshold=250)  # too strict: misses everything
    train = ev.find_utterances(clean, m.vocabulary, "train")
    grid = {"threshold": [150, 180, 250], "margin": [8], "min_steps": [3]}
    new, rep = ev.calibrate(m, train, seed=0, grid=grid)
    assert rep["before"]["hit_rate"] == 0.0 and rep["chosen"]["hit_rate"] == 1.0 and rep["met_target"]
    assert new.decision.threshold in (150, 180) and new.decision.refractory_ms == m.decision.refractory_ms
    # the sweep scores the real stream duration (a dropped-audio stream once gave None = "no false alarms")
    assert rep["chosen"]["false_alarms_per_hour"] == 0.0
    assert rep["data"]["audio_hours"] > 0
    assert rep["offline_after"]["accuracy"] == 1.0 and rep["offline_before"]["accuracy"] == 0.0
    new.save(tmp_path / "c.swm")
    back = Model.load(tmp_path / "c.swm")
    assert back.decision == new.decision
    assert back.metrics["calibration"]["chosen"]["threshold"] == new.decision.threshold
    with pytest.raises(ev.EvalError, match="test"):
        ev.calibrate(m, ev.find_utterances(clean, m.vocabulary, "all"), grid=grid)


# --- CLI --------------------------------------------------------------------

def run_cli(capsys, *argv):
    rc = main(["eval", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_json_offline(capsys, model_file, data):
    rc, out, err = run_cli(capsys, "--model", model_file, "--data", data, "--split", "test", "--json",
                           "--per-speaker")
    assert rc == 0, err
    r = json.loads(out)
    for key in ("accuracy", "n", "false_accept_rate", "per_class_recall", "confusion", "labels", "rejected",
                "n_unknown", "model"):
        assert key in r
    assert r["model"] == "tiny" and r["n"] == 6 and r["accuracy"] == pytest.approx(4 / 6)
    assert r["confusion"] == [[2, 1, 0], [0, 2, 1]] and r["false_accept_rate"] == 0.5
    assert set(r["per_speaker"]) == {"alice", "bob"}
    # progress goes to stderr (plain lines: not a tty), never into the JSON on stdout
    assert re.fullmatch(r"offline files: 8/8 100% .* left 00:00", err.splitlines()[-1])
    rc, text, _ = run_cli(capsys, "--model", model_file, "--data", data, "--split", "test")
    assert rc == 0 and "accuracy: 66.7 %" in text and "rejected" in text and "50.0 % (1/2)" in text


def test_cli_stream_and_calibrate(capsys, model_file, clean, tmp_path):
    rc, out, err = run_cli(capsys, "--model", model_file, "--data", clean, "--split", "test", "--stream",
                           "--seed", 2, "--json")
    assert rc == 0, err
    r = json.loads(out)
    for key in ("hit_rate", "wrong_word_rate", "false_alarms_per_hour", "audio_hours", "n_hits",
                "n_false_alarms"):
        assert key in r
    assert r["hit_rate"] == 1.0 and r["mode"] == "stream"
    assert re.fullmatch(r"stream \(seed 2\) blocks: (\d+)/\1 100% .* left 00:00", err.splitlines()[-1])
    rc, _, err = run_cli(capsys, "--model", model_file, "--data", clean, "--split", "test", "--calibrate",
                         "--out", tmp_path / "x.swm")
    assert rc == 2 and "test split" in err and not (tmp_path / "x.swm").exists()
    rc, out, err = run_cli(capsys, "--model", model_file, "--data", clean, "--split", "train", "--calibrate",
                           "--out", tmp_path / "x.swm", "--thresholds", "160,200", "--margins", "8",
                           "--min-steps", "3", "--json")
    assert rc == 0, err
    assert json.loads(out)["met_target"] and Model.load(tmp_path / "x.swm").metrics["calibration"]
    # 2 thresholds x 1 margin x 1 min_steps x the default 7 hold_steps x 8 peaks
    assert "calibration sweep (segment rule) points: 112/112 100%" in err
    assert re.search(r"stream \(seed 0\) blocks: (\d+)/\1 100%", err)
    assert re.fullmatch(r"offline files: 6/6 100% .* left 00:00", err.splitlines()[-1])


def test_cli_mismatch_runs(capsys, model_file, data):
    rc, out, err = run_cli(capsys, "--model", model_file, "--data", data, "--split", "train", "--json",
                           "--chip", 3, "--mismatch", 0.1)
    assert rc == 0, err
    r = json.loads(out)
    assert r["chip"]["seed"] == 3 and r["chip"]["gain"] == 0.1 and r["n"] == 2


def test_cli_errors(capsys, model_file, data, tmp_path):
    rc, _, err = run_cli(capsys, "--model", model_file, "--data", tmp_path / "missing")
    assert rc == 2 and "does not exist" in err
    rc, _, err = run_cli(capsys, "--model", "no-such-model", "--data", data)
    assert rc == 2 and "no model 'no-such-model'" in err
    bad = tmp_path / "bad.swm"
    raw = bytearray(model_file.read_bytes())
    raw[100] ^= 0xFF
    bad.write_bytes(bytes(raw))
    rc, _, err = run_cli(capsys, "--model", bad, "--data", data)
    assert rc == 2 and "bad.swm" in err and "checksum" in err
    rc, _, err = run_cli(capsys, "--model", model_file, "--data", data, "--stream", "--noise-db", "loud")
    assert rc == 2 and "--noise-db" in err
    rc, _, err = run_cli(capsys, "--model", model_file, "--data", data, "--stream", "--plot", tmp_path / "p.png")
    assert rc == 2 and "--plot" in err
    (tmp_path / "junk.swm").write_bytes(b"not a model")
    rc, _, err = run_cli(capsys, "--model", tmp_path / "junk.swm", "--data", data)
    assert rc == 2 and "junk.swm" in err


def test_cli_plot(capsys, model_file, data, tmp_path, monkeypatch):
    out_png = tmp_path / "p.png"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    rc, _, err = run_cli(capsys, "--model", model_file, "--data", data, "--plot", out_png)
    assert rc == 2 and "pip install matplotlib" in err
    monkeypatch.delitem(sys.modules, "matplotlib")
    pytest.importorskip("matplotlib")
    rc, _, err = run_cli(capsys, "--model", model_file, "--data", data, "--split", "test", "--plot", out_png)
    assert rc == 0, err
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_subprocess_smoke(model_file, data):
    import subprocess
    r = subprocess.run([sys.executable, "-P", "-m", "spikewire.cli", "eval", "--model", str(model_file),
                        "--data", str(data), "--split", "test", "--json"], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n"] == 6


# --- mixed sample rates and unknown words ------------------------------------

def test_build_stream_resamples_other_rates_without_aliasing(tmp_path):
    """Files at another rate join the stream band-limited: a 6 kHz tone in a 16 kHz file
    is above the 8 kHz stream's Nyquist frequency and must vanish (linear interpolation
    used to fold it to 2 kHz), a 1 kHz tone keeps its level."""
    t16 = np.arange(16000) / 16000
    write_wav(tmp_path / "low_a_0.wav", tone(FREQ["low"]), RATE)
    write_wav(tmp_path / "low_a_1.wav", tone(FREQ["low"]), RATE)
    write_wav(tmp_path / "low_a_2.wav", tone(FREQ["low"]), RATE)
    write_wav(tmp_path / "high_b_0.wav", (0.3 * np.sin(2 * np.pi * 6000 * t16)).astype(np.float32), 16000)
    write_wav(tmp_path / "mid_b_1.wav", (0.3 * np.sin(2 * np.pi * 1000 * t16)).astype(np.float32), 16000)
    utts = ev.find_utterances(tmp_path, ["low", "high"])
    s = ev.build_stream(utts, seed=0, noise="none")
    assert s.rate == RATE  # the most common rate
    seg = {g.label: g for g in s.segments}

    def part(label):
        g = seg[label]
        return s.samples[int(g.start_s * RATE) + 200:int(g.end_s * RATE) - 200]

    assert np.sqrt(np.mean(part("high") ** 2)) < 0.003  # the 6 kHz tone is gone (was 0.21 RMS)
    mid = part("mid")
    assert np.sqrt(np.mean(mid ** 2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.02)
    spec = np.abs(np.fft.rfft(mid))
    assert np.fft.rfftfreq(mid.size, 1 / RATE)[spec.argmax()] == pytest.approx(1000, abs=5)
    # up-sampling keeps a tone too
    y = ev.resample(np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE), RATE, 22050)
    assert y.size == 22050 and np.sqrt(np.mean(y[500:-500] ** 2)) == pytest.approx(np.sqrt(0.5), rel=0.01)


@pytest.fixture(scope="module")
def unknown(tmp_path_factory):
    """Unknown words (the 1.3 kHz "mid" tone the none unit listens to), no FSDD names."""
    root = tmp_path_factory.mktemp("unknown")
    for i in range(4):
        (root / "mid").mkdir(exist_ok=True)
        write_wav(root / "mid" / f"take{i}.wav", tone(FREQ["mid"], dur=0.3 + 0.05 * i), RATE)
    return root


def test_unknown_utterances(unknown, clean, tmp_path):
    m = tiny_model()
    u = ev.unknown_utterances([unknown], m.vocabulary)
    assert len(u) == 4 and not any(x.known for x in u) and {x.split for x in u} == {None}
    with pytest.raises(ev.EvalError, match="holds words of the vocabulary: \\['high', 'low'\\]"):
        ev.unknown_utterances([clean], m.vocabulary)
    with pytest.raises(ev.EvalError, match="does not exist"):
        ev.unknown_utterances([tmp_path / "nope"], m.vocabulary)


def test_cli_unknown_words_in_stream_and_calibration(capsys, model_file, clean, unknown, tmp_path):
    rc, out, err = run_cli(capsys, "--model", model_file, "--data", clean, "--split", "test", "--stream",
                           "--unknown", unknown, "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["n_unknown"] == 4 and r["n_utterances"] == 6 and r["false_accept_rate"] == 0.0
    assert r["unknown_dirs"] == [str(unknown)]
    # calibration of the segment rule with a false-accept target
    rc, out, err = run_cli(capsys, "--model", model_file, "--data", clean, "--split", "train", "--calibrate",
                           "--rule", "segment", "--unknown", unknown, "--max-false-accept", "0.0",
                           "--thresholds", "100,160", "--peaks", "160,200", "--hold-steps", "10",
                           "--margins", "8", "--min-steps", "3", "--out", tmp_path / "s.swm", "--json")
    assert rc == 0, err
    r = json.loads(out)
    assert r["met_target"] and r["rule"] == "segment" and r["chosen"]["false_accept_rate"] == 0.0
    assert r["n_points"] == 4 and r["chosen"]["hit_rate"] == 1.0
    d = Model.load(tmp_path / "s.swm").decision
    assert d.rule == "segment" and d.hold_steps == 10 and d.threshold in (100, 160) and d.peak in (160, 200)
    # a false-accept target needs unknown words; a grid key of the other rule is an error
    rc, _, err = run_cli(capsys, "--model", model_file, "--data", clean, "--split", "train", "--calibrate",
                         "--max-false-accept", "0.1", "--out", tmp_path / "x.swm")
    assert rc == 2 and "--unknown" in err and not (tmp_path / "x.swm").exists()
    rc, _, err = run_cli(capsys, "--model", model_file, "--data", clean, "--split", "train", "--calibrate",
                         "--rule", "run", "--peaks", "100", "--out", tmp_path / "x.swm")
    assert rc == 2 and "no parameter(s) ['peak']" in err
    rc, _, err = run_cli(capsys, "--model", model_file, "--data", clean, "--split", "train", "--calibrate",
                         "--thresholds", "1x", "--out", tmp_path / "x.swm")
    assert rc == 2 and "comma-separated integers" in err
    # calibration flags without --calibrate would be ignored silently: an error instead
    rc, _, err = run_cli(capsys, "--model", model_file, "--data", clean, "--split", "test", "--stream",
                         "--rule", "run", "--peaks", "100")
    assert rc == 2 and "--rule, --peaks only apply to --calibrate" in err
    rc, _, err = run_cli(capsys, "--model", model_file, "--data", clean, "--split", "train", "--calibrate",
                         "--unknown", unknown, "--max-false-accept", "5", "--out", tmp_path / "x.swm")
    assert rc == 2 and "fraction in 0..1" in err
    rc, _, err = run_cli(capsys, "--model", model_file, "--data", clean, "--split", "train", "--calibrate",
                         "--rule", "run", "--thresholds", "100,300", "--out", tmp_path / "x.swm")
    assert rc == 2 and "calibration grid: decision threshold must be an int in 0..255, got 300" in err
    assert not (tmp_path / "x.swm").exists()


def test_choose_operating_point_false_accept_constraint():
    rows = [dict(threshold=t, margin=0, min_steps=1, hit_rate=h, wrong_word_rate=0.0, false_alarms_per_hour=0.0,
                 false_accept_rate=fa) for t, h, fa in [(100, 1.0, 0.2), (150, 0.95, 0.05), (200, 0.8, 0.0)]]
    assert ev.choose_operating_point(rows)[0]["threshold"] == 100  # accepts are not in the objective
    assert ev.choose_operating_point(rows, 2.0, 0.1)[0]["threshold"] == 150
    best, ok = ev.choose_operating_point(rows, 2.0, -1.0)
    assert not ok and best["threshold"] == 200  # nothing meets it: the fewest accepts
