"""Tests for tools/protocol.py: the speaker-disjoint validation split and folds.

Speaker lists are generated here; the WAV-reading path uses a generated data
root (never ../shared).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from spikewire.audio import write_wav
from spikewire.tools.datasets import Utterance
from spikewire.tools.protocol import corpus_counts, folds, format_counts, main, speaker_rank_key, validation_speakers


def speakers(n: int, prefix: str = "s") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


def utt(corpus: str, speaker: str, i: int, label: str = "one") -> Utterance:
    return Utterance(Path(f"/gen/{corpus}/{speaker}_{i}.wav"), label, speaker, i, None, True, 16000, corpus)


def test_rank_key_is_the_documented_sha256():
    assert speaker_rank_key("gscabc", "gsc", 3) == hashlib.sha256(b"3:gsc:gscabc").hexdigest()


def test_validation_is_a_seeded_third_and_deterministic():
    sp = speakers(300)
    v0 = validation_speakers(sp, "gsc", seed=0)
    assert len(v0) == 100 and v0 <= set(sp)
    assert validation_speakers(list(reversed(sp)) + sp[:50], "gsc", seed=0) == v0  # order, repeats
    v1 = validation_speakers(sp, "gsc", seed=1)
    assert len(v1) == 100 and v1 != v0
    assert validation_speakers(sp, "other-pool", seed=0) != v0
    assert len(validation_speakers(speakers(34), "p")) == 11
    assert len(validation_speakers(speakers(3), "p")) == 1
    assert validation_speakers([], "p") == frozenset()
    with pytest.raises(ValueError, match="seed"):
        validation_speakers(sp, "p", seed=-1)
    with pytest.raises(ValueError, match="fraction"):
        validation_speakers(sp, "p", fraction=1.5)


def test_adding_a_speaker_moves_at_most_one_old_speaker():
    sp = speakers(200)
    before = validation_speakers(sp, "gsc")
    for new in ("zz-new", "aa-new", "s9999", "x"):
        after = validation_speakers(sp + [new], "gsc")
        assert len(before ^ (after - {new})) <= 1


def corpus_lists():
    fsdd = [utt("fsdd", s, i, "seven") for s in ("george", "jackson", "lucas") for i in range(4)]
    digits = [utt("gsc-digits", s, i) for s in speakers(30, "gsc") for i in range(2)]
    words = [utt("gsc-words", s, 0, "yes") for s in speakers(60, "gsc")]  # half shared with digits
    dsp = [utt("dspspeech20", s, i, "open") for s in speakers(12, "dsp") for i in range(2)]
    return fsdd + digits + words + dsp


def test_folds_are_speaker_disjoint_and_cover_everything():
    us = corpus_lists()
    fs = folds(us)
    assert [f.name for f in fs] == ["validation", "loso-george", "loso-jackson", "loso-lucas"]
    for f in fs:
        train_sp = {(u.corpus.split("-")[0], u.speaker) for u in f.train}
        test_sp = {(u.corpus.split("-")[0], u.speaker) for u in f.test}
        assert not train_sp & test_sp, f.name
        assert sorted(map(id, f.train + f.test)) == sorted(map(id, us))
    val = fs[0]
    assert all(u.corpus != "fsdd" for u in val.test)
    gsc_val = {u.speaker for u in val.test if u.corpus.startswith("gsc")}
    assert gsc_val == validation_speakers(speakers(60, "gsc"), "gsc")  # one decision for the whole pool
    assert len({u.speaker for u in val.test if u.corpus == "dspspeech20"}) == 4
    loso = fs[2]
    assert {u.speaker for u in loso.test} == {"jackson"} and len(loso.test) == 4
    assert all(u.corpus == "fsdd" for u in loso.test)


def test_folds_stable_under_adding_files():
    us = corpus_lists()
    more = us + [utt("gsc-words", s, 5, "no") for s in speakers(60, "gsc")[::7]] + [utt("fsdd", "lucas", 9)]
    a, b = folds(us), folds(more)
    for fa, fb in zip(a, b):
        assert fa.name == fb.name and fa.test_speakers == fb.test_speakers
        assert set(fa.test) <= set(fb.test) and set(fa.train) <= set(fb.train)
    assert folds(list(reversed(us)))[0].test_speakers == a[0].test_speakers


def test_folds_need_corpus_and_speaker():
    u = Utterance(Path("x.wav"), "one", "s")
    with pytest.raises(ValueError, match="no corpus"):
        folds([u])
    with pytest.raises(ValueError, match="without a speaker"):
        folds([utt("gsc-words", None, 0)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown corpus"):
        folds([utt("elsewhere", "s", 0)])


def wav(path: Path, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, (0.2 * np.sin(np.arange(rate // 50) / 4)).astype(np.float32), rate)


def test_counts_on_a_generated_data_root(tmp_path, capsys):
    for s in ("george", "jackson"):
        wav(tmp_path / "fsdd" / "recordings" / f"1_{s}_0.wav", 8000)
    for s in speakers(6, ""):
        wav(tmp_path / "gsc-v2" / "digits" / f"2_gsc{s}_0.wav", 16000)
        wav(tmp_path / "gsc-v2" / "words" / "go" / f"{s}_nohash_0.wav", 16000)
        wav(tmp_path / "gsc-v2" / "words" / "up" / f"{s}_nohash_1.wav", 16000)
    wav(tmp_path / "more-voices" / "digits" / "3_inspx_0.wav", 48000)
    wav(tmp_path / "more-voices" / "words" / "sixty" / "astallison_0.wav", 8000)
    for s in speakers(3, "dsp"):
        wav(tmp_path / "dspspeech20" / "open" / f"{s}_1.wav", 16000)
    rows = {r["corpus"]: r for r in corpus_counts(tmp_path)}
    assert (rows["fsdd"]["files"], rows["fsdd"]["validation_files"]) == (2, 0)
    assert (rows["gsc-digits"]["speakers"], rows["gsc-digits"]["validation_speakers"]) == (6, 2)
    assert (rows["gsc-words"]["files"], rows["gsc-words"]["validation_files"]) == (12, 4)
    assert rows["more-voices-digits"]["rates"] == [48000]
    assert rows["dspspeech20"]["validation_speakers"] == 1
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("corpus") and "gsc-words" in out and "48000" in out
    assert format_counts(list(rows.values())).splitlines()[1:] == out.strip().splitlines()[1:]
    assert main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
