"""tools/adapt.py: shots are picked per word, seeded and disjoint from the evaluation files, and
learning labelled utterances on the C learner moves the model toward the labels."""
from __future__ import annotations

import numpy as np

from conftest import make_tiny_model
from spikewire.audio import write_wav
from spikewire.learning import LearningConfig
from spikewire.tools.adapt import accuracy, adapt, learn_shots, pick_shots
from spikewire.tools.datasets import Utterance
from spikewire.tools.offline import evaluate_files


def _tones(tmp_path, n=6):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        for f in (300.0, 3000.0):
            t = np.arange(int(0.4 * 16000)) / 16000
            x = 0.3 * np.sin(2 * np.pi * f * (1 + 0.02 * rng.standard_normal()) * t)
            x = np.concatenate([np.zeros(1600), x, np.zeros(1600)]).astype(np.float32)
            p = tmp_path / f"{int(f)}_{i}.wav"
            write_wav(p, x, 16000)
            out.append(p)
    return out


def test_pick_shots_is_seeded_per_word_and_disjoint(tmp_path):
    utts = [Utterance(tmp_path / f"{w}{i}.wav", w, "s", i) for w in ("low", "high") for i in range(7)]
    a, rest = pick_shots(utts, ["low", "high"], 3, seed=4)
    b, _ = pick_shots(utts, ["low", "high"], 3, seed=4)
    c, _ = pick_shots(utts, ["low", "high"], 3, seed=5)
    assert a == b and [u.path for u in a] != [u.path for u in c]
    assert sorted(u.label for u in a) == ["high"] * 3 + ["low"] * 3
    assert not set(u.path for u in a) & set(u.path for u in rest) and len(rest) == 8


def test_labels_it_gets_wrong_are_learnt(tmp_path):
    model = make_tiny_model()
    paths = _tones(tmp_path)
    probe = [Utterance(p, "low", "s", i) for i, p in enumerate(paths)]
    pred = [r.predicted for r in evaluate_files(model, probe)[0]]
    # label every file with the word the model does not say (a user correcting it)
    utts = [Utterance(p, "high" if w == "low" else "low", "s", i) for i, (p, w) in enumerate(zip(paths, pred))]
    before = accuracy(model, utts)
    lc = LearningConfig(learn=("in", "out"), rate_in=8, rate_out=4)
    adapted = learn_shots(model, utts, lc, passes=3)
    assert adapted.training["adapted"]["updates"] == 3 * len(utts)
    assert accuracy(adapted, utts) > before
    res, _ = adapt(model, utts, 2, lc, passes=3)
    assert res["n_shots"] == 4 and res["n_new_eval"] == len(utts) - 4 and res["weights_changed"] > 0
    assert set(res) >= {"new_before", "new_after", "shots", "n_new_eval", "updates"}
