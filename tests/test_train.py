"""tools/train.py on a tiny synthetic task (two tone "words"), no /work/shared needed."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import torch  # required: tests/run.sh installs it (never skipped)

from spikewire.audio import write_wav  # noqa: E402
from spikewire.config import gain_q15  # noqa: E402
from spikewire.decision import classify  # noqa: E402
from spikewire.events import Events  # noqa: E402
from spikewire.model import load  # noqa: E402
from spikewire.tools.noise import unit_rms  # noqa: E402
from spikewire.tools import train as T  # noqa: E402

VOCAB = ["low", "high"]


@pytest.fixture(scope="module")
def tone_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    rate = 8000
    for label, f0 in (("low", 300.0), ("high", 1800.0)):
        for i in range(12):  # index 0..4 test, 5.. train
            n = int(rate * rng.uniform(0.15, 0.25))
            t = np.arange(n) / rate
            env = np.sin(np.pi * t / t[-1])
            x = 0.3 * env * np.sin(2 * np.pi * f0 * rng.uniform(0.95, 1.05) * t)
            write_wav(root / f"{label}_synth_{i}.wav", x.astype(np.float32), rate)
    return root


def _cfg(tmp_path, tone_folder, out="run", **kw) -> T.TrainConfig:
    base = dict(data="", out=str(tmp_path / out), wavs=[str(tone_folder)], cache=str(tmp_path.parent / "cache"),
                seed=3, epochs=4, float_epochs=2, batch_size=8, lr=0.3, n_hid=16, variants=2, max_ms=500.0,
                pre_ms=(0, 100), post_ms=(50, 100), n_noise=4, espeak_per_word=0, threads=2)
    base.update(kw)
    return T.TrainConfig(**base)


def test_tiny_training_lowers_the_loss(tmp_path, tone_folder, capsys):
    cfg = _cfg(tmp_path, tone_folder, epochs=5, float_epochs=3)
    res = T.train(cfg, vocabulary=VOCAB, progress=True)
    # progress on stderr: plain lines (not a tty) with rate and time left, the last at the end
    err = capsys.readouterr().err.splitlines()
    assert [ln.split()[1] for ln in err] == ["1/5", "2/5", "3/5", "4/5", "5/5"]
    assert err[-1].startswith("train: 5/5 100% ") and err[-1].endswith(" left 00:00")
    h = res["history"]
    assert [r["mode"] for r in h] == ["float"] * 3 + ["fixed"] * 2
    assert h[-1]["loss"] < h[0]["loss"]
    assert all(np.isfinite(r["loss"]) for r in h)


def test_resume_equals_uninterrupted(tmp_path, tone_folder):
    # input thinning draws from a per-epoch seeded generator, so it resumes exactly too
    # and the weight average (ema) is checkpointed and becomes the result
    cfg = _cfg(tmp_path, tone_folder, out="a", epochs=3, float_epochs=1, input_dropout=0.2, ema=0.9)
    full = T.train(cfg, vocabulary=VOCAB)["net"]
    st = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    assert torch.equal(full.w_in.detach(), st["ema"]["w_in"])
    assert not torch.equal(full.w_in.detach(), st["net"]["w_in"])  # raw weights keep training
    cfg_b = dataclasses.replace(cfg, out=str(tmp_path / "b"))
    T.train(cfg_b, vocabulary=VOCAB, stop_after=2)  # interrupted after 2 of 3 epochs
    resumed = T.train(cfg_b, vocabulary=VOCAB, resume=True)
    assert len(resumed["history"]) == 3
    for (k, a), (_, b) in zip(full.state_dict().items(), resumed["net"].state_dict().items()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("decay", [0.5, 0.9, 0.998])
def test_weight_average_is_the_bias_corrected_exponential_mean(decay):
    # ema_update after steps 1..n == sum_k (1-d) d^(n-k) w_k / (1 - d^n), whatever n; the first
    # weights do not dominate a short run (they kept d^(n-1) of the old, uncorrected average)
    from spikewire.tools.trainer import ema_update

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))

    net, ema, seen = Net(), None, []
    rng = np.random.default_rng(1)
    for n in range(1, 41):
        w = torch.from_numpy(rng.normal(n, 1.0, 3))  # a drifting trajectory
        with torch.no_grad():
            net.w.copy_(w)
        seen.append(w)
        ema = ema_update(ema, net, decay, n)
        k = torch.arange(1, n + 1, dtype=torch.float64)
        c = (1 - decay) * decay ** (n - k) / (1 - decay ** n)
        want = (c[:, None] * torch.stack(seen)).sum(0)
        torch.testing.assert_close(ema["w"], want, rtol=1e-12, atol=1e-12)
    # after 40 steps of a trajectory drifting by 1 per step, the average lies in the steps seen,
    # far from step 1 (the uncorrected average at 0.998 was 0.998**39 = 92 % step 1: about 4.5)
    assert float(ema["w"].mean()) > 15.0


def test_fixed_epochs_start_from_the_average_and_follow_their_lr_scale(tmp_path, tone_folder):
    # lr scale 0 in the fixed epochs: the weights stay exactly the average taken when they start
    cfg = _cfg(tmp_path, tone_folder, out="q", epochs=3, float_epochs=2, ema=0.9, fixed_lr_scale=0.0)
    T.train(cfg, vocabulary=VOCAB, stop_after=2)
    st2 = torch.load(tmp_path / "q" / "checkpoint.pt", weights_only=False)
    assert not torch.equal(st2["net"]["w_in"], st2["ema"]["w_in"])  # raw and average differ after float
    res = T.train(cfg, vocabulary=VOCAB, resume=True)
    st3 = torch.load(tmp_path / "q" / "checkpoint.pt", weights_only=False)
    assert torch.equal(st3["net"]["w_in"], st2["ema"]["w_in"])  # loaded, then not moved
    torch.testing.assert_close(res["net"].w_in.detach(), st2["ema"]["w_in"])


def test_export_round_trip_and_core_agrees(tmp_path, tone_folder):
    cfg = _cfg(tmp_path, tone_folder, epochs=2, float_epochs=1)
    res = T.train(cfg, vocabulary=VOCAB)
    path = tmp_path / "m" / "tones.swm"
    model = T.export_model(res, cfg, path, name="tones")
    m = load(path)
    assert m.vocabulary == VOCAB and m.has_none_unit and m.core.n_out == 3
    assert m.core.preset == "bss2"
    for k in ("in", "rec", "out"):
        np.testing.assert_array_equal(m.weights[k], model.weights[k])
        np.testing.assert_array_equal(m.weights[k], res["net"].int_weights()[k])
    assert np.all(np.diag(m.weights["rec"]) == 0)
    # bit-exact: the torch fixed forward and the C core give the same CADC maxima
    assert m.metrics["torch_core_codes_identical"] is True
    assert m.metrics["gap_points"] == 0
    assert m.training["config"]["seed"] == 3 and "git_commit" in m.training
    sample = res["data"].clean(res["data"].test)[0]
    core = m.make_core()
    r = core.run(Events(sample.indptr, sample.channels))
    assert r.cadc.shape == (sample.n_steps, 3)
    classify(r.cadc, 2, True, m.decision)


def test_coarse_steps_and_per_neuron_time_constants_ship_in_the_model(tmp_path, tone_folder):
    cfg = _cfg(tmp_path, tone_folder, epochs=2, float_epochs=1, step_ms=4.0,
               frontend={"max_rate_hz": 400.0, "max_spikes_per_step": 8},
               tau_mem_range_ms=(10.0, 200.0), tau_syn_range_ms=(5.0, 40.0))
    res = T.train(cfg, vocabulary=VOCAB)
    assert res["fe"].step_ms == 4.0 and res["core"].dt_ms == 4.0
    assert res["fe"].max_rate_hz == 400.0 and res["fe"].max_spikes_per_step == 8
    hid, _ = res["net"].params
    assert len(set(hid.gain_mem.tolist())) > 8 and len(set(hid.decay_syn.tolist())) > 8
    # tau in [10, 200] ms at 4 ms steps: gain_mem = (1 - exp(-4/tau)) * 2^15
    assert gain_q15(200.0, 4.0) <= hid.gain_mem.min() and hid.gain_mem.max() <= gain_q15(10.0, 4.0)
    again, _ = T.neuron_params(cfg, res["core"])  # seeded: the same draw after a resume
    np.testing.assert_array_equal(again.gain_mem, hid.gain_mem)
    m = T.export_model(res, cfg, tmp_path / "m" / "het.swm", name="het")
    back = load(tmp_path / "m" / "het.swm")
    np.testing.assert_array_equal(back.params[0].gain_mem, hid.gain_mem)
    np.testing.assert_array_equal(back.params[0].decay_syn, hid.decay_syn)
    assert back.frontend == res["fe"] and back.core.dt_ms == 4.0
    assert m.metrics["torch_core_codes_identical"] is True  # the core runs the same per-neuron params
    with pytest.raises(ValueError, match="range"):
        T.neuron_params(dataclasses.replace(cfg, tau_mem_range_ms=(50.0, 10.0)), res["core"])


def test_leave_one_speaker_out_trains_without_each_speaker(tmp_path, capsys):
    rec = tmp_path / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for spk, shift in (("ann", 1.0), ("bob", 1.3)):
        for digit, f0 in ((0, 300.0), (1, 1500.0)):
            for i in range(6):
                t = np.arange(int(8000 * rng.uniform(0.15, 0.25))) / 8000
                x = 0.3 * np.sin(np.pi * t / t[-1]) * np.sin(2 * np.pi * f0 * shift * t)
                write_wav(rec / f"{digit}_{spk}_{i}.wav", x.astype(np.float32), 8000)
    cfg = T.TrainConfig(data=str(tmp_path / "fsdd"), out=str(tmp_path / "loso"), cache=str(tmp_path / "cache"),
                        seed=1, epochs=2, float_epochs=1, batch_size=8, n_hid=16, variants=1, max_ms=500.0,
                        pre_ms=(0, 50), post_ms=(50, 50), n_noise=2, espeak_per_word=0, threads=2, step_ms=4.0)
    summary = T.leave_one_speaker_out(cfg, "tones", progress=True)
    folds = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("leave-one-speaker-out folds")]
    assert [ln.split()[2] for ln in folds] == ["1/2", "2/2"]  # a line per fold (the last one at the end)
    assert sorted(summary["per_speaker"]) == ["ann", "bob"]
    for spk, r in summary["per_speaker"].items():
        assert r["fsdd_test_n"] == 12  # every recording of the held-out speaker, both splits
        m = load(r["model"])
        assert m.training["config"]["exclude_speakers"] == [spk]
        assert m.metrics["test_set"].startswith("all recordings of held-out speakers")
    on_disk = json.loads((tmp_path / "loso" / "loso.json").read_text())
    assert on_disk["per_speaker"]["ann"]["core_test_acc"] == summary["per_speaker"]["ann"]["core_test_acc"]
    assert summary["min_core_acc"] == min(r["core_test_acc"] for r in summary["per_speaker"].values())


def test_augmentation_context_and_noise_are_deterministic(tmp_path):
    cfg = T.TrainConfig()
    x = np.ones(800, np.float32) * 0.1
    a = T.in_context(x, 8000, np.random.default_rng(1), cfg)
    b = T.in_context(x, 8000, np.random.default_rng(1), cfg)
    np.testing.assert_array_equal(a, b)
    assert 800 + 80 <= a.shape[0] <= 800 * 10 ** (6 / 20) + 8000  # context added around the word
    # speed perturbation: a tone keeps its shape but gets shorter/longer and higher/lower
    sp = dataclasses.replace(cfg, speed=(0.8, 1.25), pre_ms=(0, 0), post_ms=(0, 0), noise_prob=0.0, gain_db=(0, 0))
    tone = np.sin(2 * np.pi * 500 * np.arange(8000) / 8000).astype(np.float32)
    lens = set()
    for seed in range(6):
        y = T.in_context(tone, 8000, np.random.default_rng(seed), sp)
        f = 8000 / y.shape[0]  # the speed factor drawn
        assert 0.8 - 1e-3 <= f <= 1.25 + 1e-3
        zc = np.count_nonzero(np.diff(np.signbit(y)))  # zero crossings: 2 per period, all periods kept
        assert zc == pytest.approx(999, abs=2)
        assert zc / (y.shape[0] / 8000) == pytest.approx(1000 * f, rel=0.01)  # pitch up by f
        lens.add(y.shape[0])
        np.testing.assert_array_equal(y, T.in_context(tone, 8000, np.random.default_rng(seed), sp))
    assert len(lens) == 6
    for color in ("white", "pink", "brown"):
        n = unit_rms(np.random.default_rng(0), 4000, color)
        assert abs(np.sqrt(np.mean(n ** 2)) - 1) < 1e-6


def test_batches_bucket_by_length():
    s = [T.Sample(np.zeros(n + 1, np.int64), np.zeros(0, np.int32), 0) for n in range(1, 641)]
    bl = T.batches(s, 10, np.random.default_rng(0))
    assert sorted(np.concatenate(bl).tolist()) == list(range(640))
    spread = [np.ptp([s[i].n_steps for i in b]) for b in bl]
    assert np.mean(spread) < 150  # sorted within chunks of 8 batches (unbucketed: about 520)
    assert T.batches(s, 10, np.random.default_rng(0))[0].tolist() == bl[0].tolist()  # seeded


@pytest.mark.parametrize("flags, message", [
    (["--ema", "1.5"], "ema must be in"),
    (["--tau-mem-range", "50", "10"], "tau_mem_range_ms"),
    (["--step-ms", "0.3"], "step_ms"),  # not a whole number of 8 kHz samples
    (["--exclude-speaker", "nobody"], "unknown speaker"),
    (["--float-epochs", "9", "--epochs", "4"], "float_epochs"),
])
def test_cli_bad_settings_give_one_clear_error(tmp_path, capsys, flags, message):
    rec = tmp_path / "fsdd" / "recordings"
    rec.mkdir(parents=True)
    write_wav(rec / "0_ann_0.wav", np.zeros(800, np.float32), 8000)
    out = tmp_path / "run"
    rc = T.main(["--data", str(tmp_path / "fsdd"), "--out", str(out), "--cache", str(tmp_path / "c"), *flags])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not out.exists()  # nothing trained, no run folder


def test_cli_leave_one_speaker_out_excludes_its_own_speakers(tmp_path):
    with pytest.raises(SystemExit) as e:
        T.main(["--data", str(tmp_path), "--out", str(tmp_path / "r"), "--leave-one-speaker-out",
                "--exclude-speaker", "ann"])
    assert e.value.code == 2
