"""tools/words.py: the unknown-word sets and their espeak-ng synthesis."""
from __future__ import annotations

import shutil

import pytest

from spikewire.audio import read_wav
from spikewire.tools import words
from spikewire.tools.datasets import DIGIT_WORDS, wav_folder

HOMOPHONES = {"won", "to", "too", "for", "fore", "ate", "oh"}


def test_word_sets_are_disjoint_and_not_digits():
    sets = [set(v) for v in words.UNKNOWN_SETS.values()]
    assert sum(len(s) for s in sets) == len(set().union(*sets))  # no word in two sets
    for s in sets:
        assert not s & (set(DIGIT_WORDS) | HOMOPHONES)
    assert tuple(words.WORD_SETS["digits"]) == tuple(DIGIT_WORDS)  # training voices for the vocabulary


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed (tests/run.sh installs it)")
def test_cli_writes_labelled_folders(tmp_path, capsys):
    assert words.main(["--set", "heldout", "--per-word", "2", "--out", str(tmp_path)]) == 0
    assert "20 clips of 10 heldout words" in capsys.readouterr().out
    utts = wav_folder(tmp_path, DIGIT_WORDS)
    assert len(utts) == 20 and {u.label for u in utts} == set(words.HELDOUT_WORDS)
    assert not any(u.known for u in utts) and {u.split for u in utts} == {None}
    x, rate = read_wav(utts[0].path)
    assert rate > 0 and 0.1 * rate < x.size < 3 * rate and abs(x).max() > 0.05  # trimmed speech, not silence
    # deterministic names: a second run reuses every file
    before = {u.path: u.path.stat().st_mtime_ns for u in utts}
    assert words.main(["--set", "heldout", "--per-word", "2", "--out", str(tmp_path)]) == 0
    assert {u.path: u.path.stat().st_mtime_ns for u in wav_folder(tmp_path)} == before


def test_cli_errors(tmp_path, capsys, monkeypatch):
    assert words.main(["--set", "heldout", "--per-word", "0", "--out", str(tmp_path)]) == 2
    assert "--per-word" in capsys.readouterr().err
    assert words.main(["--set", "heldout", "--seed", "-1", "--out", str(tmp_path)]) == 2
    assert "--seed >= 0" in capsys.readouterr().err
    monkeypatch.setattr(words.shutil, "which", lambda name: None)
    assert words.main(["--set", "calibration", "--out", str(tmp_path / "w")]) == 2
    assert "espeak-ng is not installed" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
