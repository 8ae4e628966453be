"""Tests for tools/synthvoices.py: synthetic voices as extra training speakers (real espeak-ng;
tests/run.sh installs it; flite and festival are hidden here so the test does not depend on them)."""
from __future__ import annotations

import shutil

import numpy as np

from spikewire.audio import read_wav
from spikewire.tools import synthvoices
from spikewire.tools.datasets import DIGIT_WORDS, digit_folder, word_folder


def only_espeak(monkeypatch):
    real = shutil.which
    monkeypatch.setattr(synthvoices.shutil, "which", lambda t: real(t) if t == "espeak-ng" else None)


def test_speakers_are_seeded_and_named_by_engine(monkeypatch):
    only_espeak(monkeypatch)
    a = synthvoices.speakers(0, 5)
    assert a == synthvoices.speakers(0, 5) and a != synthvoices.speakers(1, 5)
    assert len(a) == 5 and len({s for s, _, _ in a}) == 5
    assert all(s.startswith("espeak-en") and e == "espeak" and "_" not in s for s, e, _ in a)


def test_generate_writes_readable_digits_and_words_once(tmp_path, monkeypatch):
    only_espeak(monkeypatch)
    n_d, n_w, spk = synthvoices.generate(tmp_path, per_digit=1, words_per_voice=2, seed=0, espeak_voices=2)
    assert (n_d, n_w, len(spk)) == (20, 4, 2)
    digits = digit_folder(tmp_path / "digits", "synth:")
    assert len(digits) == 20 and {u.label for u in digits} == set(DIGIT_WORDS)
    assert {u.speaker for u in digits} == {"synth:" + s for s in spk}
    words = word_folder(tmp_path / "words")
    assert len(words) == 4 and not any(u.known for u in words)
    for u in digits[:3]:
        x, r = read_wav(u.path)
        assert r == u.rate and 0.1 < x.size / r < 2.0 and np.max(np.abs(x)) > 0.05   # trimmed speech
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.wav")}
    assert synthvoices.generate(tmp_path, per_digit=1, words_per_voice=2, seed=0, espeak_voices=2)[:2] == (20, 4)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.wav")} == before      # existing files kept


def test_main_rejects_bad_arguments(tmp_path, capsys):
    assert synthvoices.main(["--out", str(tmp_path), "--per-digit", "0"]) == 2
    assert "per-digit" in capsys.readouterr().err
