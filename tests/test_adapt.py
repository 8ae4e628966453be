"""`spikewire adapt` (tools/adapt.py): shots are picked per word, seeded and disjoint from the evaluation
files; they are played through the runtime with learning on and labelled by stretch id through the
control path; a "new speaker" the model gets wrong is learnt (accuracy on the other files rises); the
adapted model is a normal model file with its provenance; no torch needed."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_tiny_model
from spikewire.audio import write_wav
from spikewire.learning import MATRICES, LearningConfig
from spikewire.model import load as load_model
from spikewire.tools.adapt import adapt, pick_shots
from spikewire.tools.datasets import Utterance, wav_folder

TONE = {"low": 300.0, "high": 3000.0}


def _tone(path, f, rng):
    t = np.arange(int(0.4 * 16000)) / 16000
    x = 0.3 * np.sin(2 * np.pi * f * (1 + 0.02 * rng.standard_normal()) * t)
    write_wav(path, np.concatenate([np.zeros(1600), x, np.zeros(1600)]).astype(np.float32), 16000)


@pytest.fixture(scope="module")
def speakers(tmp_path_factory):
    """A "new speaker" whose words sound like the other word's tone (the tiny model hears every one of
    them wrong), and the "old speakers" (the tones as trained) with FSDD-style indices 0-9."""
    rng = np.random.default_rng(0)
    new = tmp_path_factory.mktemp("new")
    old = tmp_path_factory.mktemp("old") / "recordings"
    old.mkdir()
    for i in range(6):
        _tone(new / f"low_newbie_{i}.wav", TONE["high"], rng)
        _tone(new / f"high_newbie_{i}.wav", TONE["low"], rng)
    for spk in ("ann", "bob"):
        for i in range(8):
            for w, f in TONE.items():
                _tone(old / f"{w}_{spk}_{i}.wav", f, rng)
    return new, old.parent


def test_pick_shots_is_seeded_per_word_and_disjoint(tmp_path):
    utts = [Utterance(tmp_path / f"{w}{i}.wav", w, "s", i) for w in ("low", "high") for i in range(7)]
    a, rest = pick_shots(utts, ["low", "high"], 3, seed=4)
    b, _ = pick_shots(utts, ["low", "high"], 3, seed=4)
    c, _ = pick_shots(utts, ["low", "high"], 3, seed=5)
    assert a == b and [u.path for u in a] != [u.path for u in c]
    assert sorted(u.label for u in a) == ["high"] * 3 + ["low"] * 3
    assert not set(u.path for u in a) & set(u.path for u in rest) and len(rest) == 8


def test_corrections_through_the_runtime_are_learnt(speakers):
    new_dir, _ = speakers
    model = make_tiny_model()
    new = wav_folder(new_dir, model.vocabulary)
    lc = LearningConfig(learn=("out",), rate_out=2)
    lines = []
    res, adapted = adapt(model, new, 2, lc, passes=3, log=lines.append)
    assert res["n_shots"] == 4 and res["n_new_eval"] == 8
    assert res["new_before"] == 0.0                       # the model hears every word of this speaker wrong
    assert res["new_after"] > res["new_before"], res
    # every shot was heard (a stretch) and labelled by its id through the control path
    assert res["unheard"] == 0 and res["label_errors"] == [] and res["updates"] == 4, res
    assert res["shots_fired_right"] + res["shots_fired_wrong"] + res["shots_rejected"] == 4
    assert res["shots_fired_wrong"] >= 1 and len(lines) == 4 and all("stretch" in s for s in lines)
    assert res["weights_changed"] > 0
    assert any(not np.array_equal(adapted.weights[m], model.weights[m]) for m in MATRICES)


def _adapt_cli(args, timeout=240):
    """``spikewire adapt`` in a subprocess in which ``import torch`` fails (the torch-free install)."""
    code = ("import sys; sys.modules['torch'] = None; from spikewire.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-P", "-c", code, "adapt", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_spikewire_adapt_cli(speakers, tiny_model_path, tmp_path):
    new_dir, old_dir = speakers
    out = tmp_path / "adapted.swm"
    args = ["--model", str(tiny_model_path), "--data", str(new_dir), "--shots", "2", "--old-data", str(old_dir),
            "--seed", "3", "--passes", "3", "--learning", '{"learn": ["out"], "rate_out": 2}', "--json"]
    r = _adapt_cli(args + ["--out", str(out)])
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert {"new_before", "new_after", "old_before", "old_after", "shots", "n_new_eval"} <= set(res)
    for k in ("new_before", "new_after", "old_before", "old_after"):
        assert 0.0 <= res[k] <= 1.0, (k, res[k])
    assert res["shots"] == 2 and res["n_new_eval"] == 8 and res["n_old_eval"] == 2 * 2 * 5   # index 0-4 only
    assert res["new_after"] > res["new_before"] and res["old_before"] == 1.0, res
    m = load_model(out)                                  # a normal model file: schema, config, checksum
    prov = m.training["adapted"]
    assert prov["base_sha256"] == hashlib.sha256(tiny_model_path.read_bytes()).hexdigest()
    assert prov["updates"] == res["updates"] == 4 and prov["shots"] == 2 and prov["rule"] == "eprop"
    assert prov["learning"]["rate_out"] == 2 and len(prov["shot_files"]) == 4
    base = load_model(tiny_model_path)
    assert any(not np.array_equal(m.weights[k], base.weights[k]) for k in MATRICES)
    # seeded: the same command gives the same shots and the same weights
    again = tmp_path / "again.swm"
    r2 = _adapt_cli(args + ["--out", str(again)])
    assert r2.returncode == 0, r2.stderr
    assert json.loads(r2.stdout)["new_after"] == res["new_after"]
    m2 = load_model(again)
    assert all(np.array_equal(m.weights[k], m2.weights[k]) for k in MATRICES)


def test_spikewire_adapt_bad_input(speakers, tiny_model_path):
    new_dir, _ = speakers
    r = _adapt_cli(["--model", str(tiny_model_path), "--data", str(new_dir), "--shots", "7"])
    assert r.returncode == 2 and "fewer than 7 files of low, high" in r.stderr, r.stderr
    r = _adapt_cli(["--model", str(tiny_model_path), "--data", str(new_dir), "--learning", '{"rule": "bptt"}'])
    assert r.returncode == 2 and "rule" in r.stderr, r.stderr
    r = _adapt_cli(["--data", str(new_dir / "nope")])
    assert r.returncode == 2 and "does not exist" in r.stderr, r.stderr
