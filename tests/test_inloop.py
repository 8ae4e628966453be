"""tools/inloop.py: in-the-loop training on virtual chips (issue 13).

Tiny networks and data: the values the graph carries forward are the C core's observables,
gradients flow and the loss falls on a mismatched chip, and a chip seed is a chip.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import torch

from spikewire.config import Chip, CoreConfig, PopulationConfig, apply_chip, fixed_params
from spikewire.core import Core
from spikewire.decision import DecisionConfig
from spikewire.events import Events
from spikewire.frontend import FrontEndConfig
from spikewire.model import Model
from spikewire.reference import cadc
from spikewire.tools.inloop import (FinetuneConfig, ThresholdEstimate, VirtualChip, chip_forward, decode_cadc,
                                    evaluate_on_chip, finetune, free_from_spikes, hidden_adc_range)
from spikewire.tools.snn import SNN
from spikewire.tools.train import Sample, TrainConfig, dense_batch, loss_terms

torch.set_num_threads(2)

SPREAD20 = dict(threshold=0.2, leak=0.2, decay=0.2, gain=0.2)


def _cfg(n_in=8, n_hid=20, n_out=3, t_ref_steps=2, **kw):
    return CoreConfig(n_in=n_in, n_hid=n_hid, n_out=n_out, t_ref_steps=t_ref_steps,
                      hidden=PopulationConfig(tau_syn_ms=5.0, tau_mem_ms=10.0),
                      readout=PopulationConfig(tau_syn_ms=5.0, tau_mem_ms=20.0), **kw)


def _net(cfg, seed=1):
    return SNN(cfg, mode="fixed", init_scale=(30.0, 10.0, 30.0), init_mean_in=10.0, seed=seed)


def _x(seed, B=4, T=100, n_in=8, rate=0.4):
    return torch.as_tensor(np.random.default_rng(seed).poisson(rate, (B, T, n_in)).astype(np.float64))


def test_forward_values_are_the_cores_output_exactly():
    cfg = _cfg()
    net = _net(cfg)
    chip = Chip(seed=3, **SPREAD20)
    vc = VirtualChip(cfg, fixed_params(cfg), chip)
    x = _x(0)
    out, obs = chip_forward(net, vc, x)
    # an independent core of the same chip with the same 6-bit weights
    hid, ro = fixed_params(cfg)
    core = Core(cfg, chip=chip, params=(apply_chip(hid, chip, 0), apply_chip(ro, chip, 1)))
    w = net.int_weights()
    for k in ("in", "rec", "out"):
        core.set_weights(k, w[k])
    hb, hs = hidden_adc_range(cfg)
    n_spikes = 0
    for b in range(x.shape[0]):
        core.reset()
        r = core.run_ex(Events.from_raster(x[b].numpy().astype(np.int64)))
        assert np.array_equal(out.spikes[b].detach().numpy(), r.spikes.astype(np.float64))
        assert np.array_equal(out.out_v[b].detach().numpy(), decode_cadc(r.cadc, cfg.cadc_base, cfg.cadc_shift))
        assert np.array_equal(obs.out_code[b], r.cadc)
        # hidden membranes before reset, as the chip's CADC reads them; refractory state of every step
        assert np.array_equal(obs.hid_code[b], cadc(r.hid_v_pre, hb, hs))
        assert np.array_equal(obs.free[b][1:], (r.hid_ref[:-1] == 0).astype(np.uint8))
        assert np.all(obs.free[b][0] == 1)
        assert np.array_equal(obs.free[b], free_from_spikes(r.spikes[None], cfg.t_ref_steps)[0])
        n_spikes += int(r.spikes.sum())
    assert n_spikes > 0  # the case is not trivial
    # the mismatch matters: the ideal chip's software model gives other spikes
    assert not torch.equal(net(x).spikes, out.spikes)


def test_hidden_adc_covers_every_chips_threshold():
    cfg = _cfg()
    base, shift = hidden_adc_range(cfg)
    d = cfg.hidden.v_th - cfg.hidden.v_leak
    assert base <= cfg.hidden.v_leak - d and base + 256 * (1 << shift) >= cfg.hidden.v_leak + 3 * d
    th = apply_chip(fixed_params(cfg)[0], Chip(seed=9, threshold=0.5), 0).v_th  # the widest spread there is
    code = cadc(th, base, shift)
    assert code.min() > 0 and code.max() < 255


def test_thresholds_are_inferred_from_what_the_chip_shows():
    cfg = _cfg(n_hid=40)
    net = _net(cfg, seed=2)
    chip = Chip(seed=6, **SPREAD20)
    vc = VirtualChip(cfg, fixed_params(cfg), chip)
    nominal = fixed_params(cfg)[0].v_th.astype(np.float64)
    est = ThresholdEstimate(nominal, vc.hid_range)
    assert np.array_equal(est.values(), nominal) and not est.known.any()  # nothing seen: the nominal ones
    for k in range(3):
        chip_forward(net, vc, _x(10 + k, B=8, T=150), est)  # the estimate is updated from each observation
    true = apply_chip(fixed_params(cfg)[0], chip, 0).v_th.astype(np.float64)  # only the test knows these
    _, shift = vc.hid_range
    k = est.known
    assert k.sum() >= 20, k.sum()
    assert np.all(est.lo[k] < true[k]) and np.all(true[k] < est.hi[k])  # the bounds hold
    err = np.abs(est.values() - true)
    assert np.all(err[k] <= 0.5 * (est.hi - est.lo)[k])  # the middle of bounds that hold
    tight = k & (est.hi - est.lo <= 2 * (1 << shift))
    assert tight.sum() >= 10 and np.all(err[tight] <= (1 << shift))  # most within one CADC bin
    err_nominal = np.abs(nominal[k] - true[k]).mean()
    assert np.abs(est.values()[k] - true[k]).mean() < 0.25 * err_nominal
    # neurons with one side only keep the nominal value moved inside that side
    one = ~k & (np.isfinite(est.lo) | np.isfinite(est.hi))
    v = est.values()
    assert np.all((v[one] >= est.lo[one]) & (v[one] <= est.hi[one]))
    with pytest.raises(ValueError, match="thresholds must be"):
        chip_forward(net, vc, _x(0), np.zeros(3))


def test_ideal_chip_spikes_equal_the_software_model_and_the_readout_gradient_is_the_same():
    cfg = _cfg()
    net = _net(cfg)
    x = _x(1)
    out, _ = chip_forward(net, VirtualChip(cfg, fixed_params(cfg), Chip()), x)
    sw = net(x)
    assert torch.equal(out.spikes, sw.spikes)
    assert torch.equal(torch.as_tensor(cadc(sw.out_v.detach().numpy(), cfg.cadc_base, cfg.cadc_shift)
                                       .astype(np.float64)),
                       torch.as_tensor(cadc(out.out_v.detach().numpy(), cfg.cadc_base, cfg.cadc_shift)
                                       .astype(np.float64)))
    g = torch.as_tensor(np.random.default_rng(2).standard_normal(sw.out_v.shape))
    (out.out_v * g).sum().backward()
    g_chip = net.w_out.grad.clone()
    net.zero_grad()
    (sw.out_v * g).sum().backward()
    # W_out's gradient depends only on the spikes and the readout's linear dynamics: equal
    assert torch.allclose(g_chip, net.w_out.grad, rtol=1e-12, atol=1e-9)
    assert float(g_chip.abs().sum()) > 0


def test_gradients_flow_into_every_matrix():
    cfg = _cfg()
    net = _net(cfg)
    vc = VirtualChip(cfg, fixed_params(cfg), Chip(seed=5, **SPREAD20))
    out, _ = chip_forward(net, vc, _x(2))
    loss = out.out_v[:, :, 0].mean() - out.out_v[:, :, 1].mean() + 1000 * out.spikes.mean()
    loss.backward()
    for p in (net.w_in, net.w_rec, net.w_out):
        assert p.grad is not None and torch.isfinite(p.grad).all() and float(p.grad.abs().sum()) > 0


def _toy_samples(n, cfg, seed):
    """One class per readout unit: its block of channels active (Poisson), 60-90 steps."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        y = i % cfg.n_out
        T = int(rng.integers(60, 90))
        r = np.zeros((T, cfg.n_in), np.int64)
        k = cfg.n_in // cfg.n_out
        r[:, k * y:k * (y + 1)] = rng.poisson(0.3, (T, k))
        r[:, :] += rng.poisson(0.05, (T, cfg.n_in))
        ev = Events.from_raster(r)
        out.append(Sample(ev.indptr, ev.channels, y))
    return out


class _ToyData:
    def __init__(self, samples):
        self.samples = samples

    def train_variant(self, v):
        return self.samples


def _toy_model(cfg, seed=0):
    net = SNN(cfg, mode="fixed", init_scale=(8.0, 2.0, 8.0), init_mean_in=2.0, seed=seed)
    fe = FrontEndConfig(n_channels=cfg.n_in, step_ms=cfg.dt_ms)
    return Model(name="toy", vocabulary=["a"], has_none_unit=True, frontend=fe, core=cfg,
                 params=fixed_params(cfg), weights=net.int_weights(), decision=DecisionConfig(threshold=1))


def _fixed_batch_loss(model, samples, tcfg, chip):
    """The training loss on the chip for the first 16 samples (no grad)."""
    from spikewire.tools.inloop import InLoopNet, net_from_model

    net = net_from_model(model)
    x, lens, y = dense_batch(samples, np.arange(16), model.core.n_in)
    with torch.no_grad():
        loss, _, _ = loss_terms(InLoopNet(net, chip), x, lens, y, tcfg)
    return float(loss)


def test_loss_decreases_on_a_mismatched_chip():
    cfg = _cfg(n_in=16, n_hid=16, n_out=2)
    model = _toy_model(cfg)
    samples = _toy_samples(32, cfg, 0)
    tcfg = TrainConfig(variants=1, step_ms=cfg.dt_ms)
    chip = Chip(seed=11, **SPREAD20)
    before = _fixed_batch_loss(model, samples, tcfg, VirtualChip(cfg, model.params, chip))
    fcfg = FinetuneConfig(epochs=6, lr=1.0, batch_size=16, seed=0, forward="chip")
    tuned, hist = finetune(model, _ToyData(samples), tcfg, fcfg, VirtualChip(cfg, model.params, chip))
    after = _fixed_batch_loss(tuned, samples, tcfg, VirtualChip(cfg, model.params, chip))
    assert len(hist) == 6 and all(h["forward"] == "chip" for h in hist)
    assert after < 0.8 * before, (before, after)
    assert any(not np.array_equal(tuned.weights[k], model.weights[k]) for k in ("in", "rec", "out"))
    # the fine-tuned weights are still 6-bit and the rest of the model is unchanged
    assert all(tuned.weights[k].dtype == np.int8 and np.abs(tuned.weights[k]).max() <= 63 for k in tuned.weights)
    assert tuned.core == model.core and tuned.params is model.params


def test_finetune_is_reproducible():
    cfg = _cfg(n_in=16, n_hid=12, n_out=2)
    model = _toy_model(cfg, seed=3)
    samples = _toy_samples(16, cfg, 1)
    tcfg = TrainConfig(variants=1, step_ms=cfg.dt_ms)
    fcfg = FinetuneConfig(epochs=2, lr=0.5, batch_size=8, seed=4)
    chip = Chip(seed=2, **SPREAD20)
    a, _ = finetune(model, _ToyData(samples), tcfg, fcfg, VirtualChip(cfg, model.params, chip, 50, 9))
    b, _ = finetune(model, _ToyData(samples), tcfg, fcfg, VirtualChip(cfg, model.params, chip, 50, 9))
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)
    # the process-wide flush-to-zero flag is off again (subnormals survive a multiplication)
    assert float(torch.tensor([1e-310], dtype=torch.float64) * 1.0) != 0.0


def test_a_chip_seed_reproduces_its_mismatch():
    cfg = _cfg()
    w = _net(cfg).int_weights()
    ev = [Events.from_raster(_x(3)[b].numpy().astype(np.int64)) for b in range(4)]

    def obs(seed, **kw):
        return VirtualChip(cfg, fixed_params(cfg), Chip(seed=seed, **SPREAD20), **kw).observe(w, ev, 100)

    a, b, other = obs(7), obs(7), obs(8)
    for f in ("spikes", "hid_code", "out_code"):
        assert np.array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.spikes, other.spikes)
    # the same seed through the model's path (what `spikewire eval --chip` runs) gives the same chip
    hid, ro = fixed_params(cfg)
    chip = Chip(seed=7, **SPREAD20)
    core = Core(cfg, chip=chip, params=(apply_chip(hid, chip, 0), apply_chip(ro, chip, 1)))
    for k in ("in", "rec", "out"):
        core.set_weights(k, w[k])
    core.reset()
    assert np.array_equal(core.run(ev[0]).cadc, a.out_code[0])


def test_temporal_noise_differs_per_sample_and_is_seeded():
    cfg = _cfg()
    w = _net(cfg).int_weights()
    one = Events.from_raster(_x(4, B=1)[0].numpy().astype(np.int64))
    chip = Chip(seed=1, **SPREAD20)

    def obs(amp, seed=0):
        return VirtualChip(cfg, fixed_params(cfg), chip, noise_amp=amp, noise_seed=seed).observe(w, [one, one], 100)

    quiet = obs(0)
    assert np.array_equal(quiet.spikes[0], quiet.spikes[1])  # no noise: the same trial twice
    noisy = obs(800)
    assert not np.array_equal(noisy.spikes[0], noisy.spikes[1])  # noise: two trials differ
    again = obs(800)
    assert np.array_equal(noisy.spikes, again.spikes)  # and the run is reproducible
    assert not np.array_equal(obs(800, seed=1).spikes, noisy.spikes)


def test_evaluate_on_chip_matches_the_core_decision():
    cfg = _cfg(n_in=16, n_hid=16, n_out=2)
    model = _toy_model(cfg, seed=5)
    samples = _toy_samples(20, cfg, 2)
    chip = Chip(seed=4, **SPREAD20)
    res = evaluate_on_chip(model, samples, chip)
    core = model.make_core(chip)
    from spikewire.decision import classify

    right = 0
    for s in samples:
        core.reset()
        w, _ = classify(core.run(Events(s.indptr, s.channels)).cadc, 1, True, model.decision)
        right += int((-1 if w is None else w) == s.label)
    assert res["n"] == 20 and res["acc"] == right / 20


def test_bad_input_is_refused():
    cfg = _cfg()
    net = _net(cfg)
    vc = VirtualChip(cfg, fixed_params(cfg), Chip(seed=1, **SPREAD20))
    with pytest.raises(ValueError, match="integer event counts"):
        chip_forward(net, vc, _x(0) + 0.5)
    with pytest.raises(ValueError, match="integer event counts"):
        chip_forward(net, vc, -_x(0))
    net.set_mode("float")
    with pytest.raises(ValueError, match="fixed mode"):
        chip_forward(net, vc, _x(0))
    with pytest.raises(ValueError, match="forward must be"):
        FinetuneConfig(forward="magic")
    with pytest.raises(ValueError, match="spread"):
        FinetuneConfig(forward="mismatch", mismatch_spread=0.0)
    with pytest.raises(ValueError, match="noise_amp"):
        VirtualChip(cfg, fixed_params(cfg), Chip(), noise_amp=5000)
    with pytest.raises(TypeError):
        VirtualChip(cfg, fixed_params(cfg), 7)
    ev = [Events.from_raster(np.zeros((10, cfg.n_in), np.int64))]
    with pytest.raises(ValueError, match="more than n_steps"):
        vc.observe(net.int_weights(), ev, 5)
    with pytest.raises(ValueError, match="software chip"):
        from spikewire.tools.inloop import InLoopNet

        InLoopNet(_net(cfg), vc)(_x(0), chip=Chip(seed=2, **SPREAD20))


def test_mismatch_aware_software_finetune_runs_on_fresh_chips():
    cfg = _cfg(n_in=16, n_hid=12, n_out=2)
    model = _toy_model(cfg, seed=6)
    samples = _toy_samples(16, cfg, 3)
    tcfg = TrainConfig(variants=1, step_ms=cfg.dt_ms)
    tuned, hist = finetune(model, _ToyData(samples), tcfg,
                           FinetuneConfig(epochs=1, lr=0.5, batch_size=8, forward="mismatch", mismatch_spread=0.2))
    assert hist[0]["forward"] == "mismatch" and dataclasses.is_dataclass(tuned)


def test_cli_refuses_bad_input_with_exit_2(tmp_path, capsys):
    from spikewire.tools.train import main

    base = ["--in-the-loop", "--out", str(tmp_path / "o"), "--init", "kws-digits"]
    assert main(base + ["--data", str(tmp_path / "missing"), "--chip", "1"]) == 2
    assert "error" in capsys.readouterr().err
    (tmp_path / "fsdd" / "recordings").mkdir(parents=True)
    assert main(base + ["--data", str(tmp_path / "fsdd"), "--chip", "1", "--noise", "5000"]) == 2
    assert "--noise" in capsys.readouterr().err
    assert main(base + ["--data", str(tmp_path / "fsdd"), "--chip", "1", "--mismatch", "0.9"]) == 2
    assert "spread" in capsys.readouterr().err
    assert main(["--in-the-loop", "--out", str(tmp_path / "o"), "--init", str(tmp_path / "nope.swm"),
                 "--data", str(tmp_path / "fsdd"), "--chip", "1"]) == 2
    assert not (tmp_path / "o").exists()  # nothing trained, nothing written


@pytest.mark.parametrize("t_ref", [0, 1, 2, 5])
def test_refractory_periods_follow_from_the_spikes(t_ref):
    from spikewire.reference import ReferenceCore
    from spikewire.tools.inloop import free_from_spikes

    cfg = _cfg(t_ref_steps=t_ref)
    net = _net(cfg, seed=4)
    w = net.int_weights()
    ref = ReferenceCore(cfg, *fixed_params(cfg))
    ref.w_in[:], ref.w_rec[:], ref.w_out[:] = w["in"], w["rec"], w["out"]
    ev = Events.from_raster(_x(5, B=1)[0].numpy().astype(np.int64))
    spikes, free = [], []
    for t in range(ev.n_steps):
        free.append(ref.h_ref <= 0)  # the core's refractory counter before the step
        spikes.append(ref.step(ev.channels[ev.indptr[t]:ev.indptr[t + 1]])[0])
    spikes = np.array(spikes)[None]
    assert spikes.sum() > 10
    assert np.array_equal(free_from_spikes(spikes, t_ref)[0], np.array(free).astype(np.uint8))
