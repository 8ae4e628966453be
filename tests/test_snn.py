"""tools/snn.py: the torch model of the core is the core (fixed mode), and it trains."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import torch  # required: tests/run.sh installs it (never skipped)

from spikewire.config import WEIGHT_MAX, Chip, CoreConfig, PopulationConfig, fixed_params  # noqa: E402
from spikewire.core import Core  # noqa: E402
from spikewire.events import Events  # noqa: E402
from spikewire.reference import ReferenceCore  # noqa: E402
from spikewire.tools.snn import SNN, quantize_weights, rate_regularizer, readout_scores, spike_fn  # noqa: E402

torch.set_num_threads(2)


def _random_net(seed: int, noise: bool = False, saturate: bool = False):
    rng = np.random.default_rng(seed)
    cfg = CoreConfig(
        n_in=int(rng.integers(4, 16)), n_hid=int(rng.integers(5, 24)), n_out=int(rng.integers(1, 6)),
        t_ref_steps=int(rng.integers(0, 4)), shift_in=int(rng.integers(4, 9)), shift_rec=int(rng.integers(3, 8)),
        shift_out=int(rng.integers(3, 10)), noise_amp=300 if noise else 0, noise_seed=int(rng.integers(100)),
        hidden=PopulationConfig(tau_syn_ms=float(rng.uniform(1, 10)), tau_mem_ms=float(rng.uniform(2, 20)),
                                v_leak=int(rng.integers(-600, 600)), v_reset=int(rng.integers(-1500, 200))),
        readout=PopulationConfig(tau_syn_ms=float(rng.uniform(1, 10)), tau_mem_ms=float(rng.uniform(2, 30)),
                                 v_leak=int(rng.integers(-600, 600))))
    # the random cases never reach the int16 rail; the saturating ones (maximal excitatory weights, the
    # largest output shift, a readout leak potential near the top) always do
    if saturate:
        cfg = dataclasses.replace(cfg, shift_out=14, readout=dataclasses.replace(cfg.readout, v_leak=30000))
    net = SNN(cfg, mode="fixed", init_scale=(40.0, 25.0, 50.0), init_mean_in=12.0, seed=seed)
    if saturate:
        with torch.no_grad():
            net.w_in.fill_(float(WEIGHT_MAX))
            net.w_out.fill_(float(WEIGHT_MAX))
    x = rng.poisson(0.5, (3, 120, cfg.n_in))
    x[:, 60:75] = 0  # a gap: relaxation toward the leak potential
    return cfg, net, x


def _reference_outputs(cfg, w, x, chip):
    hid, out = fixed_params(cfg, chip)
    res = []
    for b in range(x.shape[0]):
        ref = ReferenceCore(cfg, hid, out)
        ref.w_in[:], ref.w_rec[:], ref.w_out[:] = w["in"], w["rec"], w["out"]
        s, hv, ov, _ = ref.run(*Events.from_raster(x[b]))
        res.append((s, hv, ov))
    return res


@pytest.mark.parametrize("seed,saturate", [(s, False) for s in range(6)] + [(s, True) for s in range(2)])
@pytest.mark.parametrize("mismatch", [False, True])
@pytest.mark.parametrize("engine", ["bptt", "autograd"])
def test_fixed_forward_is_bit_exact_with_reference_and_core(seed, saturate, mismatch, engine):
    cfg, net, x = _random_net(seed, saturate=saturate)
    net.engine = engine
    chip = Chip(seed=seed + 11, threshold=0.15, leak=0.1, decay=0.1, gain=0.2) if mismatch else None
    w = net.int_weights()
    with torch.no_grad():
        out = net(torch.as_tensor(x), chip=chip)
    ref = _reference_outputs(cfg, w, x, chip)
    core = Core(cfg, chip=chip)
    for k, v in w.items():
        core.set_weights(k, v)
    saturated = False
    for b, (s, hv, ov) in enumerate(ref):
        np.testing.assert_array_equal(out.spikes[b].numpy().astype(np.uint8), s)
        np.testing.assert_array_equal(out.out_v[b].numpy(), ov.astype(np.float64))
        core.reset()
        r = core.run(Events.from_raster(x[b]))
        np.testing.assert_array_equal(r.spikes, s)
        np.testing.assert_array_equal(r.out_v, ov)
        saturated |= bool(np.any(np.abs(ov.astype(np.int64)) >= 32767))
    assert out.spikes.sum() > 0
    # the saturating cases must really reach the rail (else they test nothing), the others stay below it
    assert saturated == saturate


def test_fixed_forward_with_noise_and_hidden_v_is_bit_exact():
    cfg, net, x = _random_net(3, noise=True)
    net.engine = "autograd"
    w = net.int_weights()
    with torch.no_grad():
        out = net(torch.as_tensor(x), record_hidden_v=True)
        fast = SNN(cfg, mode="fixed", init_scale=(40.0, 25.0, 50.0), init_mean_in=12.0, seed=3)(torch.as_tensor(x))
    for b, (s, hv, ov) in enumerate(_reference_outputs(cfg, w, x, None)):
        np.testing.assert_array_equal(out.spikes[b].numpy().astype(np.uint8), s)
        np.testing.assert_array_equal(out.hid_v[b].numpy(), hv.astype(np.float64))
        np.testing.assert_array_equal(out.out_v[b].numpy(), ov.astype(np.float64))
        np.testing.assert_array_equal(fast.out_v[b].numpy(), ov.astype(np.float64))


@pytest.mark.parametrize("mode", ["fixed", "float"])
def test_hand_written_bptt_equals_autograd(mode):
    cfg, _, x = _random_net(4)
    chip = Chip(seed=2, threshold=0.1, gain=0.1)
    lens = torch.tensor([120, 100, 70])
    grads = []
    for engine in ("autograd", "bptt"):
        net = SNN(cfg, mode=mode, init_scale=(40.0, 25.0, 50.0), init_mean_in=12.0, seed=4, engine=engine,
                  dtype=torch.float64)
        out = net(torch.as_tensor(x), chip=chip)
        s = readout_scores(out.out_v, lens)
        up, low = rate_regularizer(out.spikes, lens, 0.05, 0.1)
        loss = torch.nn.functional.cross_entropy(s / 1000.0, torch.tensor([0, 0, 0]) % cfg.n_out) + 10 * up + 10 * low
        loss.backward()
        grads.append([p.grad.clone() for p in (net.w_in, net.w_rec, net.w_out)])
    for ga, gb in zip(*grads):
        torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-12)


def test_gradients_flow_through_spikes_and_quantised_weights():
    cfg, net, x = _random_net(1)
    out = net(torch.as_tensor(x))
    s = readout_scores(out.out_v, torch.tensor([120, 120, 120]), "mean")
    s.sum().backward()
    for p in (net.w_in, net.w_rec, net.w_out):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    # w_in reaches the loss only through hidden spikes: the surrogate carries it
    assert net.w_in.grad.abs().max() > 0
    w = torch.tensor([-70.0, -1.4, -0.5, 0.49, 0.5, 62.6, 80.0], requires_grad=True)
    q = quantize_weights(w)
    assert q.tolist() == [-63.0, -1.0, 0.0, 0.0, 1.0, 63.0, 63.0]  # round half up, clamp
    q.sum().backward()
    assert w.grad.tolist() == [1.0] * 7  # straight through


@pytest.mark.parametrize("kind", ["superspike", "triangle", "sigmoid"])
def test_surrogates(kind):
    u = torch.tensor([-1.0, -0.1, 0.0, 0.1, 1.0], requires_grad=True)
    z = spike_fn(u, kind, 2.0)
    assert z.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    z.sum().backward()
    assert torch.isfinite(u.grad).all() and u.grad[2] == u.grad.max() and u.grad[2] > 0


def test_rate_regulariser_penalises_out_of_bound_neurons():
    T = 100
    spikes = torch.zeros(2, T, 3)
    spikes[:, ::2, 0] = 1.0  # neuron 0: rate 0.5 > upper
    spikes[:, ::20, 1] = 1.0  # neuron 1: rate 0.05, inside [0.01, 0.2]
    lens = torch.tensor([T, T])
    up, low = rate_regularizer(spikes, lens, lower=0.01, upper=0.2)
    assert up == pytest.approx(((0.5 - 0.2) ** 2) / 3)  # only neuron 0
    assert low == pytest.approx(((0.01 - 0.0) ** 2) / 3)  # only the silent neuron 2
    ok = torch.zeros(2, T, 3)
    ok[:, ::20] = 1.0
    up, low = rate_regularizer(ok, lens, lower=0.01, upper=0.2)
    assert up == 0 and low == 0


def test_readout_scores_ignore_padding():
    v = torch.zeros(2, 5, 2)
    v[0, 4, 0] = 100.0  # beyond sample 0's length
    v[0, 1, 0] = 3.0
    s = readout_scores(v, torch.tensor([3, 5]))
    assert s[0, 0] == 3.0
    m = readout_scores(v, torch.tensor([3, 5]), "mean")
    assert m[0, 0] == pytest.approx(1.0)
