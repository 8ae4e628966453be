"""Golden vectors (tests/golden/core_v1.txt) pin the arithmetic across releases and CPUs.

The same file is checked by the C test binary (tests/c/test_core.c), natively
with sanitizers and on aarch64 under qemu (tests/c/run.sh).
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from spikewire.config import CoreConfig, FixedPopulation
from spikewire.core import Core, Events
from spikewire.reference import ReferenceCore

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "golden"))
from make_golden import OUT as GOLDEN, fnv1a64, output_hash  # noqa: E402  (one hash definition)


def read_cases():
    toks = []
    with open(GOLDEN) as f:
        for line in f:
            if not line.startswith("#"):
                toks.extend(line.split())
    it = iter(toks)
    cases = []
    for word in it:
        assert word == "case"
        name = next(it)
        take = lambda n: np.array([int(next(it)) for _ in range(n)], dtype=np.int64)  # noqa: E731
        assert next(it) == "config"
        (n_in, n_hid, n_out, preset, s_in, s_rec, s_out, t_ref, amp) = take(9)
        seed = int(next(it))
        cadc_base, cadc_shift = take(2)
        cfg = CoreConfig(n_in=int(n_in), n_hid=int(n_hid), n_out=int(n_out),
                         preset="bss2" if preset else "unbounded", shift_in=int(s_in), shift_rec=int(s_rec),
                         shift_out=int(s_out), t_ref_steps=int(t_ref), noise_amp=int(amp), noise_seed=seed,
                         cadc_base=int(cadc_base), cadc_shift=int(cadc_shift))
        pops = []
        for label, n in (("hidden", n_hid), ("readout", n_out)):
            assert next(it) == label
            vals = take(6 * int(n)).reshape(6, int(n)).astype(np.int32)
            pops.append(FixedPopulation(*vals))
        w = {}
        for k, shape in (("in", (n_in, n_hid)), ("rec", (n_hid, n_hid)), ("out", (n_hid, n_out))):
            assert next(it) == "w_" + k
            w[k] = take(int(shape[0] * shape[1])).reshape(int(shape[0]), int(shape[1])).astype(np.int8)
        assert next(it) == "events"
        T = int(next(it))
        indptr = take(T + 1)
        ch = take(int(indptr[-1])).astype(np.int32)
        assert next(it) == "expect"
        n_spk = int(next(it))
        h_out, h_state = int(next(it), 16), int(next(it), 16)
        assert next(it) == "end"
        cases.append(pytest.param(cfg, pops, w, Events(indptr, ch), n_spk, h_out, h_state, id=name))
    return cases


CASES = read_cases()


def test_golden_file_has_cases():
    assert len(CASES) >= 4


@pytest.mark.parametrize("cfg,pops,w,ev,n_spk,h_out,h_state", CASES)
@pytest.mark.parametrize("kernel", ["fast", "reference"])
def test_c_core_matches_golden(cfg, pops, w, ev, n_spk, h_out, h_state, kernel):
    core = Core(cfg, params=tuple(pops))
    core.kernel = kernel
    for k, m in w.items():
        core.set_weights(k, m)
    out = core.run(ev, record_hidden_v=True)
    assert out.n_spikes == n_spk
    assert output_hash(out.spikes, out.hid_v, out.out_v, out.cadc) == h_out
    assert fnv1a64(core.save_state()) == h_state


@pytest.mark.parametrize("cfg,pops,w,ev,n_spk,h_out,h_state", CASES)
def test_numpy_reference_matches_golden(cfg, pops, w, ev, n_spk, h_out, h_state):
    ref = ReferenceCore(cfg, *pops)
    for k, m in w.items():
        setattr(ref, "w_" + k, m)
    out = ref.run(ev.indptr, ev.channels)
    assert int(out[0].sum()) == n_spk
    assert output_hash(*out) == h_out
    assert fnv1a64(ref.save_state()) == h_state  # the reference writes the same state blob
