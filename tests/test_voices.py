"""Tests for tools/voices.py: the many-voices recipe (sampling, augmentation, data).

Audio and data roots are generated here (never ../shared); the front end is the
real compiled one.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from spikewire.audio import write_wav
from spikewire.tools.datasets import Utterance
from spikewire.tools.recipe import frontend_config
from spikewire.tools.voices import (
    Recipe,
    VoicesData,
    active_rms,
    augment,
    balanced_pick,
    fold_utterances,
    room_ir,
    tilt,
    voices_config,
)


def utt(corpus: str, speaker: str, i: int, label: str = "one", known: bool = True) -> Utterance:
    return Utterance(Path(f"/gen/{corpus}/{speaker}_{label}_{i}.wav"), label, speaker, i, None, known, 16000, corpus)


def tone(rate: int, seconds: float, freq: float = 440.0, amp: float = 0.1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return amp * np.sin(2 * np.pi * freq * t)


def db(x: float) -> float:
    return 20 * np.log10(x)


# ------------------------------------------------------------------ recipe

@pytest.mark.parametrize("kw, msg", [
    (dict(level_dbfs=(-8.0, -42.0)), "level_dbfs"),
    (dict(level_dbfs=(-10.0, 3.0)), "level_dbfs must be <= 0"),
    (dict(tilt=(-1.0, 0.5)), "tilt"),
    (dict(speed=(0.0, 1.0)), "speed"),
    (dict(room_prob=1.5), "room_prob"),
    (dict(n_words=-1), "n_words"),
    (dict(rt60_s=(0.0, 0.3)), "rt60_s"),
])
def test_bad_recipe(kw, msg):
    with pytest.raises(ValueError, match=msg):
        Recipe(**kw)


def test_active_rms_ignores_pauses():
    x = np.concatenate([np.zeros(8000), tone(8000, 0.6, amp=0.2), np.zeros(4000)])
    assert abs(db(active_rms(x, 8000)) - db(0.2 / np.sqrt(2))) < 0.1
    plain = np.sqrt(np.mean(x ** 2))
    assert db(active_rms(x, 8000)) - db(plain) > 4.0


def test_tilt_brightens_or_darkens_and_keeps_rms():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(16000)

    def high_share(y):
        s = np.abs(np.fft.rfft(y)) ** 2
        return s[s.shape[0] // 2:].sum() / s.sum()

    up, down = tilt(x, 0.6), tilt(x, -0.6)
    assert high_share(up) > high_share(x) + 0.2 and high_share(down) < high_share(x) - 0.2
    for y in (up, down):
        assert abs(np.sqrt(np.mean(y ** 2)) - np.sqrt(np.mean(x ** 2))) < 1e-9


def test_room_ir_decays_at_its_rt60():
    rng = np.random.default_rng(1)
    h = room_ir(16000, 0.4, rng)
    assert h[0] == 1.0 and h.shape[0] == 6400
    e = h[1:] ** 2
    first, last = e[:800].sum(), e[-800:].sum()
    assert 0 < last < first * 1e-3      # -60 dB over 0.4 s: the last 50 ms are ~50 dB below the first


def test_augment_is_seeded_sets_the_level_and_adds_noise():
    x = np.concatenate([tone(16000, 0.4), np.zeros(1600)])
    quiet = Recipe(level_dbfs=(-30.0, -30.0), noise_prob=0.0, room_prob=0.0, speed=(1.0, 1.0), tilt=(0.0, 0.0))
    y = augment(x, 16000, np.random.default_rng(5), quiet)
    assert y.dtype == np.float32 and np.all(np.abs(y) <= 1.0)
    assert abs(db(active_rms(y, 16000)) + 30.0) < 1.0
    a = augment(x, 16000, np.random.default_rng(7), Recipe())
    b = augment(x, 16000, np.random.default_rng(7), Recipe())
    c = augment(x, 16000, np.random.default_rng(8), Recipe())
    assert np.array_equal(a, b) and not (a.shape == c.shape and np.array_equal(a, c))
    noisy = Recipe(level_dbfs=(-20.0, -20.0), noise_prob=1.0, snr_db=(0.0, 0.0), room_prob=0.0, babble_prob=0.0,
                   pre_ms=(200.0, 200.0))
    z = augment(x, 16000, np.random.default_rng(2), noisy)
    lead = z[:3000].astype(np.float64)      # before the word: only noise, at the speech level (0 dB SNR)
    assert abs(db(np.sqrt(np.mean(lead ** 2))) + 20.0) < 2.0
    babble = [tone(16000, 0.3, f) for f in (200.0, 300.0, 500.0)]
    w = augment(x, 16000, np.random.default_rng(3), Recipe(noise_prob=1.0, babble_prob=1.0), babble)
    assert w.shape[0] > x.shape[0] * 0.8


def test_speed_changes_duration():
    x = tone(8000, 1.0)
    r = Recipe(speed=(1.1, 1.1), noise_prob=0.0, room_prob=0.0, pre_ms=(0.0, 0.0), post_ms=(0.0, 0.0))
    y = augment(x, 8000, np.random.default_rng(0), r)
    assert abs(y.shape[0] - 8000 / 1.1) < 2


# ------------------------------------------------------------------ sampling

def test_balanced_pick_caps_fsdd_repeats_rare_and_spreads_words():
    fsdd = [utt("fsdd", s, i) for s in ("george", "lucas") for i in range(300)]
    gsc = [utt("gsc-digits", f"gsc{k}", i) for k in range(20) for i in range(2)]
    # one chatty word speaker (200 clips) and 100 speakers with one clip each
    words = [utt("gsc-words", "gscchatty", i, "yes", False) for i in range(200)]
    words += [utt("gsc-words", f"gscw{k}", 0, "no", False) for k in range(100)]
    hard = [utt("more-voices-words", "astallison", i, "sixty", False) for i in range(5)]
    r = Recipe(fsdd_per_speaker=50, rare_repeats=3, n_words=100)
    a = balanced_pick(fsdd + gsc + words + hard, r, np.random.default_rng(0))
    b = balanced_pick(fsdd + gsc + words + hard, r, np.random.default_rng(0))
    c = balanced_pick(fsdd + gsc + words + hard, r, np.random.default_rng(1))
    assert a == b and a != c
    n = Counter((u.corpus, u.speaker) for u in a)
    assert n[("fsdd", "george")] == 50 and n[("fsdd", "lucas")] == 50
    assert len({u.index for u in a if u.speaker == "george"}) == 50       # no repeats within FSDD
    assert all(n[("gsc-digits", f"gsc{k}")] == 6 for k in range(20))
    assert n[("more-voices-words", "astallison")] == 5
    picked_words = [u for u in a if u.corpus == "gsc-words"]
    assert len(picked_words) == 100
    # weight 1/clips per speaker: the chatty speaker gets about half, not two thirds
    assert n[("gsc-words", "gscchatty")] < 70


# ------------------------------------------------------------------ data

def wav(path: Path, rate: int, freq: float, seconds: float = 0.3) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    write_wav(path, (0.3 * np.sin(2 * np.pi * freq * t) * np.hanning(t.shape[0])).astype(np.float32), rate)


def test_fold_and_voices_data_on_a_generated_root(tmp_path):
    root = tmp_path / "data"
    for s in ("george", "lucas"):
        for d in range(3):
            for i in (0, 7):       # index 0: FSDD test split, 7: train
                wav(root / "fsdd" / "recordings" / f"{d}_{s}_{i}.wav", 8000, 300 + 200 * d)
    for k in range(6):
        wav(root / "gsc-v2" / "digits" / f"{k % 3}_gsc{k:04x}_0.wav", 16000, 300 + 200 * (k % 3))
        wav(root / "gsc-v2" / "words" / "go" / f"{k:04x}_nohash_0.wav", 16000, 1500)
    wav(root / "more-voices" / "digits" / "1_inspx_0.wav", 48000, 500)
    wav(root / "more-voices" / "words" / "sixty" / "astallison_0.wav", 8000, 900)
    for k in range(3):
        wav(root / "dspspeech20" / "open" / f"d{k}_1.wav", 16000, 1200)
    tr, te = fold_utterances(str(root), "validation", 0, fsdd_test_out=True)
    assert not {u.path for u in tr} & {u.path for u in te}
    assert all(u.index != 0 for u in tr if u.corpus == "fsdd")
    assert sum(u.corpus == "fsdd" for u in te) == 6
    tr2, te2 = fold_utterances(str(root), "loso-lucas", 0, fsdd_test_out=False)
    assert {u.speaker for u in te2} == {"lucas"} and all(u.speaker != "lucas" for u in tr2)
    with pytest.raises(ValueError, match="unknown fold"):
        fold_utterances(str(root), "loso-nobody")

    cfg = voices_config(str(tmp_path / "run"), cache=str(tmp_path / "cache"), espeak_per_word=0, n_noise=2,
                        step_ms=4.0)
    fe = frontend_config(cfg)
    assert fe.normalize == "pcen"
    # --frontend log: exactly train.py's front end (the shipped FSDD recipe's)
    from spikewire.tools.recipe import TrainConfig
    from spikewire.tools.voices import LOG_FRONTEND

    log_fe = frontend_config(voices_config("x", frontend=dict(LOG_FRONTEND)))
    assert log_fe.config_hash() == frontend_config(TrainConfig()).config_hash() and log_fe.normalize == "none"
    recipe = Recipe(fsdd_per_speaker=2, rare_repeats=2, n_words=3)
    data = VoicesData(cfg, fe, recipe, tr, te)
    assert all(u.known for u in data.test) and len(data.test) < len(te)
    v0 = data.train_variant(0)
    again = VoicesData(cfg, fe, recipe, tr, te).train_variant(0)       # from the cache
    assert len(v0) == len(again)
    assert all(np.array_equal(a.channels, b.channels) and a.label == b.label for a, b in zip(v0, again))
    picked = balanced_pick(tr, recipe, np.random.default_rng([cfg.seed, 2000]))
    assert len(v0) == len(picked) + 2
    labels = Counter(s.label for s in v0)
    assert labels[data.none] == sum(not u.known for u in picked) + 2
    assert sum(s.n_steps > 0 and s.channels.size > 0 for s in v0) >= len(picked)
    v1 = data.train_variant(1)
    assert any(not np.array_equal(a.channels, b.channels) for a, b in zip(v0, v1))


def test_voices_eval_reports_every_corpus_on_a_generated_root(tmp_path):
    """tools/voices_eval.py with the shipped model on a generated root: numbers per corpus and the
    stream / noise-only parts exist and are consistent (tones are not digits: accuracy is low)."""
    from spikewire.model import Model
    from spikewire.tools.voices_eval import calibration_set, evaluate_fold, main

    root = tmp_path / "data"
    for s in ("george", "lucas"):
        for d in range(2):
            for i in (0, 7):
                wav(root / "fsdd" / "recordings" / f"{d}_{s}_{i}.wav", 8000, 300 + 200 * d)
    for k in range(6):
        wav(root / "gsc-v2" / "digits" / f"{k % 3}_gsc{k:04x}_0.wav", 16000, 300 + 200 * (k % 3))
        wav(root / "gsc-v2" / "words" / "go" / f"{k:04x}_nohash_0.wav", 16000, 1500)
    wav(root / "more-voices" / "digits" / "1_inspx_0.wav", 48000, 500)
    wav(root / "more-voices" / "words" / "sixty" / "astallison_0.wav", 8000, 900)
    for k in range(3):
        wav(root / "dspspeech20" / "open" / f"d{k}_1.wav", 16000, 1200)
    model = Model.load(Path(__file__).resolve().parents[1] / "models" / "kws-digits" / "kws-digits.swm")
    rep = evaluate_fold(model, str(root), "validation", True, noise_minutes=0.05, n_stream_words=5)
    off = rep["offline"]
    assert off["fsdd"]["n"] == 4 and off["gsc-digits"]["n"] == 2
    assert off["gsc-words"]["n_unknown"] == 2 and off["gsc-words"]["n"] == 0
    assert 0.0 <= off["gsc-words"]["false_accept_rate"] <= 1.0
    st = rep["streaming"]
    assert set(st) == {"heldout_speakers_pink-50", "heldout_speakers_pink-30", "fsdd_test_pink-50",
                       "fsdd_test_pink-30"}
    assert st["fsdd_test_pink-50"]["n_utterances"] == 4 and st["heldout_speakers_pink-50"]["n_unknown"] > 0
    assert rep["noise_only"]["minutes"] == 0.05 and rep["noise_only"]["n_false_alarms"] >= 0
    cal = calibration_set(str(root), "validation", True)
    assert cal and all(u.split != "test" for u in cal)
    assert main([str(tmp_path / "missing.swm"), "--root", str(root), "--out", str(tmp_path / "r.json")]) == 2


def test_recipe_overrides_from_the_command_line():
    from spikewire.tools.voices import recipe_overrides

    r = Recipe(**recipe_overrides(["snr_db=[10, 40]", "noise_prob=0.5", "fsdd_per_speaker=300"]))
    assert r.snr_db == (10, 40) and r.noise_prob == 0.5 and r.fsdd_per_speaker == 300
    for bad, msg in ((["snr=1"], "FIELD one of"), (["noise_prob"], "FIELD=VALUE"), (["snr_db=[1"], "not JSON")):
        with pytest.raises(ValueError, match=msg):
            recipe_overrides(bad)
    with pytest.raises(ValueError, match="noise_prob must be in 0..1"):
        Recipe(**recipe_overrides(["noise_prob=2"]))


def test_frontend_overrides_from_the_command_line():
    from spikewire.tools.voices import frontend_overrides

    o = frontend_overrides(["n_channels=32", "pcen_offset_db=0"])
    cfg = voices_config("x", frontend=o)
    fe = frontend_config(cfg)
    assert fe.n_channels == 32 and fe.pcen_offset_db == 0.0 and fe.normalize == "pcen"
    for bad, msg in ((["step_ms=1"], "FIELD one of"), (["n_channels"], "FIELD=VALUE"), (["n_channels=3x"], "not JSON")):
        with pytest.raises(ValueError, match=msg):
            frontend_overrides(bad)
    with pytest.raises(ValueError, match="n_channels"):
        frontend_config(voices_config("x", frontend=frontend_overrides(["n_channels=8"])))


def test_balanced_pick_caps_synthetic_voices_and_keeps_their_words():
    from spikewire.tools.voices import SYNTH_DIGITS, SYNTH_WORDS

    synth = [utt(SYNTH_DIGITS, f"synth:v{k}", i, label) for k in range(4) for i in range(3)
             for label in ("one", "two", "three", "four", "five")]
    swords = [utt(SYNTH_WORDS, f"synth:v{k}", 0, "hello", False) for k in range(4)]
    gsc = [utt("gsc-digits", "gsc1", 0)]
    a = balanced_pick(synth + swords + gsc, Recipe(synth_per_voice=4, rare_repeats=2, n_words=0),
                      np.random.default_rng(0))
    n = Counter((u.corpus, u.speaker) for u in a)
    assert all(n[(SYNTH_DIGITS, f"synth:v{k}")] == 4 for k in range(4))
    assert len({u.path for u in a if u.corpus == SYNTH_DIGITS}) == 16          # no repeats within a voice
    assert all(n[(SYNTH_WORDS, f"synth:v{k}")] == 1 for k in range(4)) and n[("gsc-digits", "gsc1")] == 2
    with pytest.raises(ValueError, match="synth_per_voice"):
        Recipe(synth_per_voice=-1)


def test_fold_all_and_synthetic_voices_on_a_generated_root(tmp_path):
    from spikewire.tools.voices import SYNTH_DIGITS, SYNTH_WORDS, synthetic_utterances

    root = tmp_path / "data"
    for s in ("george", "lucas"):
        for i in (0, 7):
            wav(root / "fsdd" / "recordings" / f"1_{s}_{i}.wav", 8000, 500)
    for k in range(6):
        wav(root / "gsc-v2" / "digits" / f"{k % 3}_gsc{k:04x}_0.wav", 16000, 300 + 200 * (k % 3))
        wav(root / "gsc-v2" / "words" / "go" / f"{k:04x}_nohash_0.wav", 16000, 1500)
    wav(root / "more-voices" / "digits" / "1_inspx_0.wav", 48000, 500)
    wav(root / "more-voices" / "words" / "sixty" / "astallison_0.wav", 8000, 900)
    wav(root / "dspspeech20" / "open" / "d0_1.wav", 16000, 1200)
    syn = tmp_path / "synth"
    wav(syn / "digits" / "3_flite-slt_0.wav", 16000, 700)
    wav(syn / "digits" / "4_espeak-en-us-f2_1.wav", 22050, 800)
    wav(syn / "words" / "hello" / "flite-slt_0.wav", 16000, 900)
    su = synthetic_utterances(str(syn))
    assert {(u.corpus, u.speaker, u.label, u.known) for u in su} == {
        (SYNTH_DIGITS, "synth:flite-slt", "three", True), (SYNTH_DIGITS, "synth:espeak-en-us-f2", "four", True),
        (SYNTH_WORDS, "synth:flite-slt", "hello", False)}
    every = 4 + 6 + 6 + 1 + 1 + 1
    tr, te = fold_utterances(str(root), "all", 0, fsdd_test_out=False)
    assert len(tr) == every and te == []
    tr, te = fold_utterances(str(root), "all", 0, fsdd_test_out=True, synthetic=str(syn))
    assert {u.path.name for u in te} == {"1_george_0.wav", "1_lucas_0.wav"}
    assert len(tr) == every - 2 + 3
    trv, tev = fold_utterances(str(root), "validation", 0, fsdd_test_out=True, synthetic=str(syn))
    assert sum(u.corpus in (SYNTH_DIGITS, SYNTH_WORDS) for u in trv) == 3
    assert not any(u.corpus in (SYNTH_DIGITS, SYNTH_WORDS) for u in tev)


def test_augment_in_stream_puts_speech_before_the_sample_for_the_front_end_only():
    from spikewire.tools.trainset import _encode_audio
    from spikewire.tools.voices import augment_in_stream

    rate = 8000
    x = tone(rate, 0.4, 500.0)
    hist = [(tone(16000, 0.5, 900.0, amp=0.3), 16000)]
    off = Recipe(noise_prob=0.0, room_prob=0.0)
    a, skip = augment_in_stream(x, rate, np.random.default_rng(3), off, (), hist)
    assert skip == 0 and np.array_equal(a, augment(x, rate, np.random.default_rng(3), off))   # history_prob 0
    on = Recipe(noise_prob=0.0, room_prob=0.0, history_prob=1.0, history_gap_s=(0.2, 0.2),
                history_level_db=(0.0, 0.0), pre_ms=(0.0, 0.0))
    y, skip = augment_in_stream(x, rate, np.random.default_rng(3), on, (), hist)
    assert skip == int(0.5 * rate) + int(0.2 * rate)                 # the 16 kHz lead resampled to 8 kHz
    assert np.all(y[int(0.5 * rate):skip] == 0.0) and np.max(np.abs(y[:int(0.5 * rate)])) > 0.01
    # the lead is at the sample's speech level (history_level_db 0)
    assert abs(db(active_rms(y[:int(0.5 * rate)], rate)) - db(active_rms(y[skip:], rate))) < 1.0
    # the lead-in's steps are dropped after the front end heard them: the tail of the whole encoding
    fe = frontend_config(voices_config("x", step_ms=4.0))
    ip, ch = _encode_audio(y, rate, fe, 10_000, skip)
    full_ip, full_ch = _encode_audio(y, rate, fe, 10_000)
    k = int(skip * 1000 / rate / 4.0)
    assert ip.shape[0] == full_ip.shape[0] - k
    assert np.array_equal(ch, full_ch[full_ip[k]:]) and np.array_equal(ip, full_ip[k:] - full_ip[k])
    # PCEN remembers the lead: the sample's first 100 ms differ from the same audio heard alone
    alone_ip, alone_ch = _encode_audio(y[skip:], rate, fe, 10_000)
    assert not np.array_equal(alone_ch[:alone_ip[25]], ch[:ip[25]])
    with pytest.raises(ValueError, match="history_prob"):
        Recipe(history_prob=1.5)


def test_train_overrides_from_the_command_line():
    from spikewire.tools.voices import train_overrides

    cfg = voices_config("x", **train_overrides(["rec_lr_scale=0.3", "snr_db=[20, 30]"]))
    assert cfg.rec_lr_scale == 0.3 and cfg.snr_db == (20, 30)
    # a larger model than bss2 allows: only with the unbounded preset
    big = voices_config("x", n_hid=384, **train_overrides(['preset="unbounded"']))
    assert big.core_config(64, 11).preset == "unbounded" and big.core_config(64, 11).n_hid == 384
    with pytest.raises(ValueError, match="bss2"):
        voices_config("x", n_hid=384).core_config(64, 11)
    for bad, msg in ((["lr=0.1"], "FIELD one of"), (["nope=1"], "FIELD one of"), (["ema"], "FIELD=VALUE"),
                     (["ema=x"], "not JSON")):
        with pytest.raises(ValueError, match=msg):
            train_overrides(bad)
