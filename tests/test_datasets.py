"""Tests for tools/datasets.py: FSDD, WAV folders, SHD HDF5, the spike cache."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from spikewire.audio import AudioFileError, read_wav, write_wav
from spikewire.tools.datasets import (
    CORPORA,
    DIGIT_WORDS,
    DatasetError,
    SpikeCache,
    Utterance,
    corpus,
    default_cache_root,
    digit_folder,
    fsdd,
    load_corpus,
    hash_config,
    read_shd,
    read_shd_speakers,
    select,
    validate_events,
    wav_folder,
    word_folder,
)

TONE = (np.sin(np.arange(80) / 3) * 0.5).astype(np.float32)


def touch_wav(path: Path, samples=TONE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, samples, 8000)
    return path


# --- FSDD -----------------------------------------------------------------

SPEAKERS = ("george", "jackson", "yweweler")


@pytest.fixture
def fsdd_root(tmp_path):
    rec = tmp_path / "fsdd" / "recordings"
    for digit in range(10):
        for sp in SPEAKERS:
            for idx in range(8):  # 0-4 test, 5-7 train
                touch_wav(rec / f"{digit}_{sp}_{idx}.wav")
    (rec / "README.txt").write_text("not audio")
    return tmp_path / "fsdd"


def test_fsdd_splits_and_labels(fsdd_root):
    train, test, everything = fsdd(fsdd_root), fsdd(fsdd_root, "test"), fsdd(fsdd_root, "all")
    assert (len(train), len(test), len(everything)) == (10 * 3 * 3, 10 * 3 * 5, 10 * 3 * 8)
    assert {u.index for u in train} == {5, 6, 7} and {u.split for u in train} == {"train"}
    assert {u.index for u in test} == {0, 1, 2, 3, 4} and {u.split for u in test} == {"test"}
    assert {u.label for u in everything} == set(DIGIT_WORDS)
    u = next(u for u in everything if u.path.name == "7_jackson_3.wav")
    assert u == Utterance(u.path, "seven", "jackson", 3, "test", True)
    assert everything == sorted(everything, key=lambda u: (DIGIT_WORDS.index(u.label), u.speaker, u.index))


def test_fsdd_accepts_recordings_folder(fsdd_root):
    assert fsdd(fsdd_root / "recordings", "all") == fsdd(fsdd_root, "all")


def test_fsdd_leave_one_speaker_out(fsdd_root):
    train = fsdd(fsdd_root, "all", exclude_speakers=["yweweler"])
    test = fsdd(fsdd_root, "all", speakers=["yweweler"])
    assert {u.speaker for u in train} == {"george", "jackson"}
    assert {u.speaker for u in test} == {"yweweler"} and len(test) == 80
    assert not {u.path for u in train} & {u.path for u in test}
    # a single string is one speaker, not a set of characters
    george = fsdd(fsdd_root, "test", speakers="george")
    assert len(george) == 50 and {u.speaker for u in george} == {"george"}
    assert len(fsdd(fsdd_root, "test", exclude_speakers="george")) == 100


def test_fsdd_errors(tmp_path, fsdd_root):
    with pytest.raises(ValueError, match=r"unknown speaker\(s\) \['gorge'\]; available: \['george'"):
        fsdd(fsdd_root, speakers=["gorge"])
    with pytest.raises(ValueError, match="split must be one of .* got 'dev'"):
        fsdd(fsdd_root, "dev")
    with pytest.raises(DatasetError, match="does not exist"):
        fsdd(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no FSDD recordings"):
        fsdd(tmp_path / "empty")
    touch_wav(fsdd_root / "recordings" / "seven_george_1.wav")
    with pytest.raises(DatasetError, match=r"seven_george_1.wav: not an FSDD file name"):
        fsdd(fsdd_root)


def test_select_split_none_only_in_all():
    us = [Utterance(Path("a.wav"), "yes"), Utterance(Path("b.wav"), "no", "s", 9, "train")]
    assert select(us, "all") == us
    assert select(us, "train") == us[1:]
    assert select(us, "test") == []


# --- WAV folders ----------------------------------------------------------


def test_wav_folder_flat_and_nested(tmp_path):
    for rel in ["yes_1.wav", "3_alice_7.wav", "3_bob_2.wav", "no.wav", "Up_take2.WAV", ".hidden.wav", "notes.txt",
                "left/a.wav", "left/deeper/b.wav", "_background_noise_/n.wav", "7/x_y_1.wav", ".git/z.wav"]:
        p = tmp_path / rel
        if rel.lower().endswith(".wav"):
            touch_wav(p)
        else:
            p.write_text("x")
    us = wav_folder(tmp_path, vocabulary=["yes", "3", "left", "seven"])
    got = {str(u.path.relative_to(tmp_path)): (u.label, u.speaker, u.index, u.split, u.known) for u in us}
    assert got == {
        "yes_1.wav": ("yes", None, None, None, True),
        "3_alice_7.wav": ("three", "alice", 7, "train", True),
        "3_bob_2.wav": ("three", "bob", 2, "test", True),
        "no.wav": ("no", None, None, None, False),
        "Up_take2.WAV": ("up", None, None, None, False),
        "left/a.wav": ("left", None, None, None, True),
        "left/deeper/b.wav": ("left", None, None, None, True),
        "_background_noise_/n.wav": ("_background_noise_", None, None, None, False),
        "7/x_y_1.wav": ("seven", None, None, None, True),
    }
    assert [u.path for u in us] == sorted(u.path for u in us)
    assert all(u.known for u in wav_folder(tmp_path))  # no vocabulary: everything is known


def test_wav_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        wav_folder(tmp_path / "nope")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DatasetError, match="no .wav files"):
        wav_folder(tmp_path)


# --- SHD / SSC ------------------------------------------------------------


def make_shd(path, times, units, labels, keys, speakers=None, vlen_keys=False):
    """Write a file in the layout of Cramer et al. 2020 (SHD/SSC)."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as f:
        g = f.create_group("spikes")
        t = g.create_dataset("times", (len(times),), dtype=h5py.vlen_dtype(np.dtype("float16")))
        u = g.create_dataset("units", (len(units),), dtype=h5py.vlen_dtype(np.dtype("uint16")))
        for i, (ti, ui) in enumerate(zip(times, units)):
            t[i] = np.asarray(ti, dtype=np.float16)
            u[i] = np.asarray(ui, dtype=np.uint16)
        f.create_dataset("labels", data=np.asarray(labels, dtype=np.uint16))
        e = f.create_group("extra")
        if vlen_keys:
            e.create_dataset("keys", data=[k.encode() for k in keys], dtype=h5py.vlen_dtype(bytes))
        else:
            e.create_dataset("keys", data=np.array([k.encode() for k in keys]))
        if speakers is not None:
            e.create_dataset("speaker", data=np.asarray(speakers, dtype=np.uint16))
    return path


SHD_TIMES = [[0.0025, 0.0005, 0.0015, 0.0016, 0.0015], [], [0.25, 0.1]]
SHD_UNITS = [[3, 699, 5, 5, 5], [], [0, 1]]
KEYS = ["zero", "eins", "two"]


@pytest.fixture
def shd_file(tmp_path):
    return make_shd(tmp_path / "shd.h5", SHD_TIMES, SHD_UNITS, [2, 0, 1], KEYS, speakers=[4, 4, 9])


@pytest.mark.parametrize("vlen_keys", [False, True])
def test_read_shd_bins_to_steps(tmp_path, vlen_keys):
    path = make_shd(tmp_path / "s.h5", SHD_TIMES, SHD_UNITS, [2, 0, 1], KEYS, vlen_keys=vlen_keys)
    samples, keys = read_shd(path)
    assert keys == KEYS
    assert [label for _, label in samples] == [2, 0, 1]
    (ip0, ch0), (ip1, ch1), (ip2, ch2) = (ev for ev, _ in samples)
    assert ip0.dtype == np.int64 and ch0.dtype == np.int32
    # steps: 0.0005 -> 0, 0.0015/0.0016 -> 1 (three spikes of unit 5 -> one event), 0.0025 -> 2
    assert ip0.tolist() == [0, 1, 2, 3] and ch0.tolist() == [699, 5, 3]
    assert ip1.tolist() == [0] and ch1.tolist() == []
    # 0.1 is 0.09998 in float16, so floor puts it in step 99; 0.25 is exact -> step 250
    assert len(ip2) == 252 and ch2.tolist() == [1, 0]
    assert np.flatnonzero(np.diff(ip2)).tolist() == [99, 250]


def test_read_shd_options(shd_file):
    (ev0, _), = read_shd(shd_file, max_samples=1)[0]
    assert ev0[1].tolist() == [699, 5, 3]
    samples, _ = read_shd(shd_file, unique=False)
    assert samples[0][0][0].tolist() == [0, 1, 4, 5] and samples[0][0][1].tolist() == [699, 5, 5, 5, 3]
    samples, _ = read_shd(shd_file, n_steps=2)
    assert [s[0][0].tolist() for s in samples] == [[0, 1, 2], [0, 0, 0], [0, 0, 0]]
    assert samples[0][0][1].tolist() == [699, 5]
    samples, _ = read_shd(shd_file, dt=2e-3)
    assert samples[0][0][0].tolist() == [0, 2, 3] and samples[0][0][1].tolist() == [5, 699, 3]
    for (ip, ch), _ in samples:
        validate_events(ip, ch)
    assert read_shd_speakers(shd_file).tolist() == [4, 4, 9]
    assert read_shd_speakers(shd_file, max_samples=2).tolist() == [4, 4]


def test_read_shd_speakers_absent(tmp_path):
    assert read_shd_speakers(make_shd(tmp_path / "s.h5", [[0.0]], [[1]], [0], ["a"])) is None


@pytest.mark.parametrize("times,units,labels,keys,message", [
    ([[0.001]], [[700]], [0], ["a"], r"sample 0: unit 700 \(spike 0\) is outside 0..699"),
    ([[0.001, -0.5]], [[1, 2]], [0], ["a"], r"spike time -0.5 \(spike 1\) is negative"),
    ([[0.001, np.nan]], [[1, 2]], [0], ["a"], "spike time nan"),
    ([[0.001], [0.002, 0.003]], [[1], [2]], [0, 0], ["a"], "sample 1: 2 spike times but 1 units"),
    ([[0.001]], [[1]], [3], ["a", "b"], "label 3 of sample 0 is outside the 2 keys"),
    ([[0.001]], [[1]], [0, 0], ["a"], "1 spike-time arrays, 1 unit arrays and 2 labels"),
])
def test_read_shd_malformed(tmp_path, times, units, labels, keys, message):
    path = make_shd(tmp_path / "bad.h5", times, units, labels, keys)
    with pytest.raises(DatasetError, match=message) as exc:
        read_shd(path)
    assert str(path) in str(exc.value)


def test_read_shd_missing_dataset_and_not_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")
    p = tmp_path / "partial.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("labels", data=np.uint16([0]))
    with pytest.raises(DatasetError, match="missing dataset 'spikes/times'"):
        read_shd(p)
    q = tmp_path / "text.h5"
    q.write_text("hello")
    with pytest.raises(DatasetError, match="not a readable HDF5 file"):
        read_shd(q)
    with pytest.raises(ValueError, match="dt must be a positive"):
        read_shd(q, dt=0)


# --- spike cache ----------------------------------------------------------


class CountingEncoder:
    def __init__(self):
        self.calls = []

    def __call__(self, path):
        self.calls.append(Path(path).name)
        n = Path(path).stat().st_size % 7 + 1
        return np.arange(n + 1), np.arange(n, dtype=np.int64) * 3


def test_cache_hit_miss_and_content_keying(tmp_path):
    cache, enc = SpikeCache(tmp_path / "cache"), CountingEncoder()
    a = touch_wav(tmp_path / "a.wav")
    ip, ch = cache.get_or_encode(a, enc, "cfg1")
    assert ip.dtype == np.int64 and ch.dtype == np.int32
    ip2, ch2 = cache.get_or_encode(a, enc, "cfg1")
    np.testing.assert_array_equal(ip, ip2)
    np.testing.assert_array_equal(ch, ch2)
    assert enc.calls == ["a.wav"] and (cache.hits, cache.misses) == (1, 1)
    # same bytes under another name: served from the same entry
    b = tmp_path / "b.wav"
    b.write_bytes(a.read_bytes())
    cache.get_or_encode(b, enc, "cfg1")
    assert enc.calls == ["a.wav"]
    # another config: encoded again
    cache.get_or_encode(a, enc, "cfg2")
    assert enc.calls == ["a.wav", "a.wav"]
    # changed content under the same name: encoded again, even through a new cache object
    touch_wav(a, TONE[:50])
    cache.get_or_encode(a, enc, "cfg1")
    SpikeCache(tmp_path / "cache").get_or_encode(a, enc, "cfg1")
    assert enc.calls == ["a.wav", "a.wav", "a.wav"]
    entry = cache.entry_path(a, "cfg1")
    assert entry.relative_to(tmp_path / "cache").parts[:2] == ("v1", "cfg1") and entry.suffix == ".npz"
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("corruption", ["garbage", "empty", "truncated", "wrong_key", "pickled", "bad_csr"])
def test_cache_corrupt_entry_is_reencoded(tmp_path, caplog, corruption):
    cache, enc = SpikeCache(tmp_path / "cache"), CountingEncoder()
    a, other = touch_wav(tmp_path / "a.wav"), touch_wav(tmp_path / "o.wav", TONE[:10])
    want = cache.get_or_encode(a, enc, "cfg")
    entry = cache.entry_path(a, "cfg")
    if corruption == "garbage":
        entry.write_bytes(b"\x00garbage" * 10)
    elif corruption == "empty":
        entry.write_bytes(b"")
    elif corruption == "truncated":
        entry.write_bytes(entry.read_bytes()[:100])
    elif corruption == "wrong_key":
        cache.get_or_encode(other, enc, "cfg")
        entry.write_bytes(cache.entry_path(other, "cfg").read_bytes())
    elif corruption == "pickled":
        with open(entry, "wb") as f:
            np.savez(f, indptr=np.array([0], dtype=object), channels=np.zeros(0, np.int32), key=np.array("x"))
    else:
        with open(entry, "wb") as f:
            np.savez(f, indptr=np.array([0, 5], dtype=np.int64), channels=np.zeros(2, np.int32),
                     key=np.array(f"cfg/{entry.stem}"))
    n_calls = len(enc.calls)
    with caplog.at_level(logging.WARNING, logger="spikewire.tools.datasets"):
        got = cache.get_or_encode(a, enc, "cfg")
    assert "is corrupt" in caplog.text and str(entry) in caplog.text
    assert len(enc.calls) == n_calls + 1 and cache.repaired == 1
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    cache.get_or_encode(a, enc, "cfg")  # repaired entry is a hit now
    assert len(enc.calls) == n_calls + 1


@pytest.mark.parametrize("output,message", [
    ((np.array([1, 2]), np.array([0])), r"indptr\[0\] is 1"),
    ((np.array([0, 2, 1]), np.array([0])), "indptr decreases at step 1"),
    ((np.array([0, 2]), np.array([0])), r"indptr\[-1\] is 2 but there are 1 channels"),
    ((np.array([0, 1]), np.array([-4])), "channel ids must be in"),
    ((np.array([0, 1]), np.array([0.5])), "channels must be a 1-D integer array"),
    ((np.array([], dtype=np.int64), np.array([], dtype=np.int32)), "indptr must be a non-empty"),
])
def test_cache_rejects_bad_encoder_output(tmp_path, output, message):
    cache = SpikeCache(tmp_path / "cache")
    a = touch_wav(tmp_path / "a.wav")
    with pytest.raises(ValueError, match=message):
        cache.get_or_encode(a, lambda p: output, "cfg")
    assert not cache.entry_path(a, "cfg").exists()


@pytest.mark.parametrize("bad", ["../etc", "", ".hidden", "a/b", "x" * 129, 5])
def test_cache_rejects_unsafe_config_hash(tmp_path, bad):
    with pytest.raises(ValueError, match="config_hash must be"):
        SpikeCache(tmp_path).get_or_encode(touch_wav(tmp_path / "a.wav"), CountingEncoder(), bad)


def test_default_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("SPIKEWIRE_CACHE", str(tmp_path / "c"))
    assert default_cache_root() == tmp_path / "c" and SpikeCache().root == tmp_path / "c"
    monkeypatch.setenv("SPIKEWIRE_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_root() == tmp_path / "home" / ".cache" / "spikewire"


def test_hash_config_is_canonical():
    h = hash_config({"rate": 16000, "bands": [1, 2], "name": "mel"})
    assert h == hash_config({"name": "mel", "bands": [1, 2], "rate": 16000})
    assert h != hash_config({"name": "mel", "bands": [1, 2], "rate": 8000})
    assert len(h) == 16 and int(h, 16) >= 0
    with pytest.raises(ValueError):
        hash_config({"x": float("nan")})


# --- digit_folder / word_folder / CORPORA ------------------------------------


def rate_wav(path: Path, rate: int, seconds: float = 0.05) -> Path:
    """A real 16-bit WAV of a 440 Hz tone at ``rate``."""
    t = np.arange(int(rate * seconds)) / rate
    path.parent.mkdir(parents=True, exist_ok=True)
    write_wav(path, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)
    return path


@pytest.fixture
def mixed_digits(tmp_path):
    root = tmp_path / "digits"
    rate_wav(root / "3_alice_0.wav", 8000)
    rate_wav(root / "3_alice_1.wav", 8000)
    rate_wav(root / "0_bob_smith_7.wav", 48000)  # speaker with an underscore
    rate_wav(root / "nine" / "a1b2c3d4_nohash_2.wav", 16000)  # Speech Commands layout
    rate_wav(root / "4" / "carol_5.wav", 22050)
    (root / "notes.txt").write_text("not audio")
    (root / ".hidden.wav").write_bytes(b"junk")
    return root


def test_digit_folder_layouts_rates_and_speakers(mixed_digits):
    us = digit_folder(mixed_digits, speaker_prefix="x", corpus="demo")
    got = [(u.label, u.speaker, u.index, u.rate, u.split, u.known, u.corpus) for u in us]
    assert got == [
        ("zero", "xbob_smith", 7, 48000, None, True, "demo"),
        ("three", "xalice", 0, 8000, None, True, "demo"),
        ("three", "xalice", 1, 8000, None, True, "demo"),
        ("four", "xcarol", 5, 22050, None, True, "demo"),
        ("nine", "xa1b2c3d4", 2, 16000, None, True, "demo"),
    ]
    for u in us:  # the rate recorded is the one the file is read at
        assert read_wav(u.path)[1] == u.rate
    split = {u.path.name: u.split for u in digit_folder(mixed_digits, index_split=True)}
    assert split["3_alice_0.wav"] == "test" and split["0_bob_smith_7.wav"] == "train"


def test_digit_folder_rejects_bad_names_words_and_files(tmp_path):
    rate_wav(tmp_path / "a" / "x_alice_0.wav", 8000)
    with pytest.raises(DatasetError, match="not a digit file name"):
        digit_folder(tmp_path / "a")
    rate_wav(tmp_path / "b" / "yes" / "alice_nohash_0.wav", 16000)
    with pytest.raises(DatasetError, match="'yes'.*not a digit.*word_folder"):
        digit_folder(tmp_path / "b")
    rate_wav(tmp_path / "c" / "two" / "noindex.wav", 16000)
    with pytest.raises(DatasetError, match="speaker"):
        digit_folder(tmp_path / "c")
    rate_wav(tmp_path / "d" / "two" / "deeper" / "alice_0.wav", 16000)
    with pytest.raises(DatasetError, match="one folder level"):
        digit_folder(tmp_path / "d")
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "1_alice_0.wav").write_bytes(b"RIFF not really")
    with pytest.raises(AudioFileError, match="1_alice_0.wav"):
        digit_folder(tmp_path / "e")
    (tmp_path / "f").mkdir()
    with pytest.raises(DatasetError, match="no .wav files"):
        digit_folder(tmp_path / "f")
    with pytest.raises(DatasetError, match="does not exist"):
        digit_folder(tmp_path / "missing")


def test_word_folder_is_the_no_keyword_class(tmp_path):
    root = tmp_path / "words"
    rate_wav(root / "yes" / "0c540988_nohash_1.wav", 16000)
    rate_wav(root / "yes" / "0c540988_nohash_0.wav", 16000)
    rate_wav(root / "Seventeen" / "astallison_0.wav", 8000)
    rate_wav(root / "letter_a" / "dsp15307_2.wav", 44100)
    us = word_folder(root, speaker_prefix="gsc", corpus="w")
    got = [(u.label, u.speaker, u.index, u.rate, u.known, u.corpus) for u in us]
    assert got == [
        ("letter_a", "gscdsp15307", 2, 44100, False, "w"),
        ("seventeen", "gscastallison", 0, 8000, False, "w"),
        ("yes", "gsc0c540988", 0, 16000, False, "w"),
        ("yes", "gsc0c540988", 1, 16000, False, "w"),
    ]
    rate_wav(root / "seven" / "bob_0.wav", 8000)
    with pytest.raises(DatasetError, match="'seven' is a digit"):
        word_folder(root)
    rate_wav(tmp_path / "flat" / "yes_bob_0.wav", 8000)
    with pytest.raises(DatasetError, match="one folder level"):
        word_folder(tmp_path / "flat")


def test_corpora_registry_licences_and_loading(tmp_path):
    names = [c.name for c in CORPORA]
    assert len(set(names)) == len(names)
    assert {c.kind for c in CORPORA} == {"digits", "words"}
    assert corpus("fsdd").licence == "CC BY-SA 4.0" and corpus("gsc-words").licence == "CC BY 4.0"
    assert corpus("dspspeech20").licence == "MIT"
    assert corpus("gsc-digits").pool == corpus("gsc-words").pool
    with pytest.raises(ValueError, match="unknown corpus 'nope'.*fsdd"):
        corpus("nope")
    # a miniature data root with the registry's layout (generated, never ../shared)
    rate_wav(tmp_path / "fsdd" / "recordings" / "7_jackson_3.wav", 8000)
    rate_wav(tmp_path / "fsdd" / "recordings" / "7_jackson_12.wav", 8000)
    rate_wav(tmp_path / "gsc-v2" / "digits" / "1_gscabc_0.wav", 16000)
    rate_wav(tmp_path / "gsc-v2" / "words" / "go" / "abc_nohash_0.wav", 16000)
    f = load_corpus("fsdd", tmp_path)
    assert [(u.label, u.speaker, u.split, u.corpus) for u in f] == [
        ("seven", "jackson", "test", "fsdd"), ("seven", "jackson", "train", "fsdd")]
    d, w = load_corpus("gsc-digits", tmp_path), load_corpus(corpus("gsc-words"), tmp_path)
    assert d[0].speaker == w[0].speaker == "gscabc"  # one person, one id across the two folders
    assert (d[0].known, w[0].known, d[0].split) == (True, False, None)
    with pytest.raises(DatasetError, match="does not exist"):
        load_corpus("dspspeech20", tmp_path)
