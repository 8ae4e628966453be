"""The fast kernel's fallbacks in csrc/core.c (step_fast) against the numpy reference.

step_fast() adds weight rows straight into int16 sums, exact only while a step has at
most SW_ROWS16 = 520 input events and at most 520 hidden spikes from the previous step
(520 * 63 <= 32767); beyond that the general int32 sums run.  With <= 520 rows it
still hands the neuron update to the plain int64 lif_plain() when
(max|acc_in| << shift_in) + (max|acc_rec| << shift_rec) > 65535; the readout likewise
(> 520 spikes this step, or max|acc_out| << shift_out > 65535).  There is no path
counter, so each test builds inputs that only the fallback can get right: the int16 sums
or the 32-bit neuron update would overflow, and the result must still equal the numpy
reference and the C reference kernel bit for bit.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spikewire.config import Chip, CoreConfig, PopulationConfig
from spikewire.core import Core, Events
from spikewire.reference import ReferenceCore

from test_core import assert_same_ex

FEW = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROWS16 = 520


def build(n_in, n_hid, shift_in, shift_rec, g_syn, v_th, w_in, w_rec, seed):
    pop = PopulationConfig(tau_syn_ms=5.0, tau_mem_ms=10.0, v_th=v_th, v_reset=0, v_leak=0, g_syn=g_syn)
    cfg = CoreConfig(n_in=n_in, n_hid=n_hid, n_out=2, hidden=pop, readout=pop, shift_in=shift_in,
                     shift_rec=shift_rec, shift_out=0, t_ref_steps=0, noise_amp=0, noise_seed=seed,
                     cadc_base=0, cadc_shift=4)
    core = Core(cfg, Chip(seed=seed))
    ref = ReferenceCore(cfg, *core.params)
    rng = np.random.default_rng(seed)
    w_out = rng.integers(-63, 64, (n_hid, 2)).astype(np.int8)
    for k, w in (("in", w_in), ("rec", w_rec), ("out", w_out)):
        core.set_weights(k, w)
        setattr(ref, "w_" + k, w)
    return core, ref


def check(core, ref, raster):
    """C fast == numpy == C plain on every observable of run_ex (pre-reset membrane,
    refractory counters and hidden CADC included); returns the fast run."""
    ev = Events.from_raster(raster)
    fast = core.run_ex(ev)
    assert_same_ex(fast, ref.run_ex(ev.indptr, ev.channels))
    core.reset()
    core.kernel = "reference"
    assert_same_ex(fast, core.run_ex(ev))
    return fast


@FEW
@given(st.integers(ROWS16 + 1, 700), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_more_than_520_events_in_a_step(n_events, n_in, seed):
    """n_events > 520 repeats of channel 0, whose weights are all +63: the int16 sum
    (n_events * 63 > 32767) would wrap negative, so only the int32 fallback gives the
    reference result (no hidden neuron could spike with a wrapped negative input)."""
    rng = np.random.default_rng(seed)
    n_hid = 16
    w_in = rng.integers(-63, 64, (n_in, n_hid)).astype(np.int8)
    w_in[0] = 63
    w_rec = rng.integers(-63, 64, (n_hid, n_hid)).astype(np.int8)
    core, ref = build(n_in, n_hid, 0, 0, 1.0, 100, w_in, w_rec, seed)
    raster = rng.integers(0, 3, (4, n_in))
    raster[:, 0] = n_events
    out = check(core, ref, raster)
    assert out.spikes[0].all()  # the un-wrapped positive drive made every neuron spike


@FEW
@given(st.integers(ROWS16 + 1, 560), st.integers(0, 2**32 - 1))
def test_more_than_520_hidden_spikes_in_a_step(n_hid, seed):
    """Every hidden neuron spikes at step 0 (threshold below the drive), so step 1 adds
    n_hid > 520 recurrent rows; w_rec is all +63, so an int16 sum would wrap."""
    rng = np.random.default_rng(seed)
    w_in = np.full((1, n_hid), 63, np.int8)
    w_rec = np.full((n_hid, n_hid), 63, np.int8)
    core, ref = build(1, n_hid, 6, 0, 1.0, 10, w_in, w_rec, seed)
    raster = np.zeros((3, 1), np.int64)
    raster[0, 0] = 1
    out = check(core, ref, raster)
    assert out.spikes[0].sum() > ROWS16  # step 1 really had > 520 recurrent rows


@FEW
@given(st.integers(300, ROWS16), st.integers(3, 4), st.floats(1.5, 1.99), st.integers(0, 2**32 - 1))
def test_sum_beyond_65535_uses_the_int64_update(n_events, shift_in, g_syn, seed):
    """<= 520 rows (the int16 sums are exact) but max|acc_in| << shift_in > 65535: the
    32-bit neuron update would compute tot * g_syn (~n_events*63*2^shift_in * 1.5*2^14)
    (>= 300*63*8 * 1.5*2^14 > 2^31) beyond int32, so only the int64 lif_plain() matches the reference."""
    assert (n_events * 63) << shift_in > 65535
    rng = np.random.default_rng(seed)
    n_hid = 12
    w_in = np.full((1, n_hid), 63, np.int8)
    w_in[0, ::2] = -63
    w_rec = rng.integers(-63, 64, (n_hid, n_hid)).astype(np.int8)
    core, ref = build(1, n_hid, shift_in, 0, g_syn, 100, w_in, w_rec, seed)
    raster = np.zeros((4, 1), np.int64)
    raster[[0, 2], 0] = n_events
    check(core, ref, raster)


@FEW
@given(st.integers(2, 40), st.integers(0, 2**32 - 1))
def test_readout_sum_beyond_65535_uses_the_int64_update(n_hid, seed):
    """Every hidden neuron spikes at step 0 into readouts whose w_out column is all +63
    with shift_out = 14: max|acc_out| << 14 > 65535, so the readout's 32-bit update
    (tot * g ~ n_hid*63*2^14 * 2^14) would overflow; only its lif_plain() path matches."""
    w_in = np.full((1, n_hid), 63, np.int8)
    w_rec = np.zeros((n_hid, n_hid), np.int8)
    core, _ = build(1, n_hid, 6, 0, 1.0, 10, w_in, w_rec, seed)
    w_out = np.full((n_hid, 2), 63, np.int8)
    w_out[:, 1] = -63
    assert (n_hid * 63) << 14 > 65535
    # the same network with shift_out = 14 (the config is frozen: a new core)
    cfg = dataclasses.replace(core.config, shift_out=14)
    core = Core(cfg, Chip(seed=seed))
    ref = ReferenceCore(cfg, *core.params)
    for k, w in (("in", w_in), ("rec", w_rec), ("out", w_out)):
        core.set_weights(k, w)
        setattr(ref, "w_" + k, w)
    raster = np.zeros((3, 1), np.int64)
    raster[0, 0] = 1
    out = check(core, ref, raster)
    assert out.spikes[0].all()
    assert out.out_v[0, 0] > 0 > out.out_v[0, 1]  # the current saturated at +-32767, no wrap
