"""sw_core_run_ex / Core.run_ex: every per-step observable (pre-reset membrane, refractory
counters, hidden CADC ...) equals the numpy reference bit for bit, in both C kernels; its
struct is checked (size, rows); and the ABI fields of sw_config are checked at create."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

from spikewire import core as core_mod
from spikewire._spikewire_c import ffi, lib
from spikewire.config import CoreConfig, PopulationConfig
from spikewire.core import RUN_FIELDS, Core, CoreError
from spikewire.reference import ReferenceCore, cadc

from test_core import SETTINGS, assert_same, assert_same_ex, make, networks


@SETTINGS
@given(networks())
def test_run_ex_matches_reference_in_both_kernels(net):
    cfg, chip, seed, T, density, wscale = net
    core, ref, ev = make(cfg, chip, seed, T, density, wscale)
    want = ref.run_ex(ev.indptr, ev.channels)
    fast = core.run_ex(ev)
    assert_same_ex(fast, want)
    core.reset()
    core.kernel = "reference"
    assert_same_ex(core.run_ex(ev), want)
    # the plain run is the same block
    core.reset()
    assert_same(core.run(ev, record_hidden_v=True), (want.spikes, want.hid_v, want.out_v, want.cadc))
    # what the fields mean (each could fail): a spike is a pre-reset membrane at or
    # above threshold, followed by the reset potential and a full refractory counter
    th, rst = core.params[0].v_th, core.params[0].v_reset
    z = fast.spikes.astype(bool)
    assert (fast.hid_v_pre[z] >= np.broadcast_to(th, z.shape)[z]).all()
    assert (fast.hid_v[z] == np.broadcast_to(rst, z.shape)[z]).all()
    assert (fast.hid_ref[z] == cfg.t_ref_steps).all()
    free = ~z & (fast.hid_ref == 0)
    if T:
        prev_ref = np.vstack([np.zeros((1, cfg.n_hid), np.uint8), fast.hid_ref[:-1]])
        free &= prev_ref == 0
    assert (fast.hid_v_pre[free] == fast.hid_v[free]).all()  # no reset: after == before
    assert np.array_equal(fast.hid_cadc, cadc(fast.hid_v, cfg.cadc_base, cfg.cadc_shift))


def _tiny(n_in=3, n_hid=5, n_out=2):
    cfg = CoreConfig(n_in=n_in, n_hid=n_hid, n_out=n_out, hidden=PopulationConfig(v_th=300),
                     readout=PopulationConfig(), shift_in=6, t_ref_steps=2)
    core = Core(cfg)
    core.set_weights("in", np.full((n_in, n_hid), 40, np.int8))
    core.set_weights("out", np.full((n_hid, n_out), 20, np.int8))
    return core


def test_run_ex_records_only_what_is_asked():
    core = _tiny()
    raster = np.ones((6, 3), np.int64)
    full = core.run_ex(raster)
    assert full.n_spikes > 0 and full.hid_ref.max() == 2  # the neurons spiked and went refractory
    core.reset()
    part = core.run_ex(raster, record=("hid_v_pre", "cadc"))
    assert part.spikes is None and part.hid_v is None and part.hid_ref is None and part.out_v is None
    assert np.array_equal(part.hid_v_pre, full.hid_v_pre) and np.array_equal(part.cadc, full.cadc)
    assert part.n_spikes == full.n_spikes  # counted even when spikes are not recorded
    core.reset()
    none = core.run_ex(raster, record=())
    assert all(getattr(none, f) is None for f in RUN_FIELDS) and none.n_spikes == full.n_spikes
    with pytest.raises(ValueError, match="unknown outputs.*'v_post'"):
        core.run_ex(raster, record=("spikes", "v_post"))
    with pytest.raises(ValueError, match="events describe 6 steps, expected 5"):
        core.run_ex(raster, n_steps=5)


def _c_run_ex(core, T, struct_size=None, max_steps=None, spikes=None):
    ip = np.zeros(T + 1, np.int64)
    o = ffi.new("sw_run_out *")
    o.struct_size = ffi.sizeof("sw_run_out") if struct_size is None else struct_size
    o.max_steps = T if max_steps is None else max_steps
    if spikes is not None:
        o.hid_spikes = ffi.from_buffer("uint8_t[]", spikes, require_writable=True)
    st = lib.sw_core_run_ex(core._ptr, T, ffi.from_buffer("int64_t[]", ip), ffi.NULL, 0, o)
    return st, ffi.string(lib.sw_core_last_error(core._ptr)).decode(), o


def test_run_ex_struct_is_checked_before_anything_runs():
    core = _tiny()
    spikes = np.zeros((4, 5), np.uint8)
    st, msg, _ = _c_run_ex(core, 4, struct_size=ffi.sizeof("sw_run_out") - 8, spikes=spikes)
    assert st == lib.SW_E_ABI and "struct_size" in msg
    st, msg, _ = _c_run_ex(core, 4, max_steps=3, spikes=spikes)
    assert st == lib.SW_E_BUFFER and "max_steps" in msg
    assert core.steps == 0
    st, _, o = _c_run_ex(core, 4, max_steps=4, spikes=spikes)
    assert st == lib.SW_OK and core.steps == 4 and o.n_spikes == 0
    assert lib.sw_core_run_ex(core._ptr, 1, ffi.new("int64_t[2]"), ffi.NULL, 0, ffi.NULL) == lib.SW_E_NULL


def _create(abi_version, struct_size):
    cfg = ffi.new("sw_config *")
    cfg.abi_version, cfg.struct_size = abi_version, struct_size
    cfg.n_in = cfg.n_hid = cfg.n_out = 1
    cfg.cadc_shift = 6
    one = ffi.new("int32_t[1]", [0])
    gain = ffi.new("int32_t[1]", [16384])
    p = ffi.new("sw_pop_params *")
    p.decay_syn = p.gain_mem = p.v_leak = p.v_th = p.v_reset = one
    p.g_syn = gain
    pp = ffi.new("sw_core **")
    st = lib.sw_core_create(cfg, p, p, pp)
    if pp[0] != ffi.NULL:
        lib.sw_core_destroy(pp[0])
    return st, ffi.string(lib.sw_create_error()).decode()


def test_sw_config_abi_fields_are_checked_at_create():
    size = ffi.sizeof("sw_config")
    assert _create(lib.SW_ABI_VERSION, size) == (lib.SW_OK, "")
    for version, sz in ((1, size), (lib.SW_ABI_VERSION + 1, size), (lib.SW_ABI_VERSION, size - 8), (0, 0)):
        st, msg = _create(version, sz)
        assert st == lib.SW_E_ABI and "another ABI version" in msg, (version, sz)


def test_binding_with_another_abi_version_fails_clearly_at_creation(monkeypatch):
    monkeypatch.setattr(core_mod, "ABI_VERSION", 1)
    with pytest.raises(CoreError, match=r"cannot create core: sw_config is from another ABI version.*SW_E_ABI"):
        _tiny()
    monkeypatch.undo()
    assert _tiny().run_ex(np.zeros((2, 3), np.int64)).n_spikes == 0  # the right version creates


def _with_steps(blob: bytes, steps: int) -> bytes:
    """The blob with its step counter (CORE payload bytes 12..20) set, CRC recomputed."""
    from spikewire import stateblob
    secs = stateblob.parse(blob)
    core = bytearray(secs[0].payload)
    assert secs[0].tag == "CORE"
    core[12:20] = steps.to_bytes(8, "little")
    return stateblob.build([stateblob.Section("CORE", True, bytes(core))] + secs[1:])


@pytest.mark.parametrize("n_hid", [1, 5, 256])
def test_step_counter_limit_refuses_to_step_past_it(n_hid):
    """At min(2^63-1, (2^64-1)//n_hid) steps a core refuses the next step (the noise counter
    steps*n_hid would wrap and repeat the noise); C and the reference agree; reset restarts."""
    from spikewire.core import CoreLimitError
    from spikewire.reference import max_steps
    limit = max_steps(n_hid)
    assert limit == (2**63 - 1 if n_hid == 1 else (2**64 - 1) // n_hid)
    core = _tiny(n_hid=n_hid)
    blob = core.save_state()
    core.load_state(_with_steps(blob, limit - 1))
    core.step([0])
    assert core.steps == limit
    with pytest.raises(CoreLimitError, match="step counter would pass its limit"):
        core.step([0])
    with pytest.raises(CoreLimitError):
        core.run_ex(np.zeros((1, 3), np.int64))
    assert core.steps == limit  # refused: nothing ran
    with pytest.raises(ValueError, match="step count outside"):
        core.load_state(_with_steps(blob, limit + 1))
    core.reset()
    core.step([0])
    assert core.steps == 1
    ref = ReferenceCore(core.config, *core.params)
    ref.load_state(_with_steps(blob, limit - 1))
    ref.step([0])
    with pytest.raises(OverflowError, match="step counter at its limit"):
        ref.step([0])
