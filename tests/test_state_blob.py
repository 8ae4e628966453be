"""The core's state blob v2 (docs/model-format.md, "Core state blob"): header, tagged
sections, CRC-32; every single-bit flip is refused; version 1 refused with a clear message;
unknown optional sections skipped, unknown required ones refused; the numpy reference writes
the same bytes as C."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import given

from spikewire import stateblob
from spikewire._spikewire_c import ffi, lib
from spikewire.config import Chip, CoreConfig, PopulationConfig
from spikewire.core import Core, CoreInputError
from spikewire.reference import ReferenceCore
from spikewire.stateblob import Section, StateBlobError

from test_core import SETTINGS, make, networks


def _core(seed=3, n_in=4, n_hid=6, n_out=3):
    cfg = CoreConfig(n_in=n_in, n_hid=n_hid, n_out=n_out, hidden=PopulationConfig(v_th=500),
                     shift_in=6, t_ref_steps=3, noise_amp=40, noise_seed=99)
    core = Core(cfg, Chip(seed=seed, threshold=0.1))
    rng = np.random.default_rng(seed)
    for k, shape in (("in", (n_in, n_hid)), ("rec", (n_hid, n_hid)), ("out", (n_hid, n_out))):
        core.set_weights(k, rng.integers(-63, 64, shape).astype(np.int8))
    core.run((rng.random((30, n_in)) < 0.5).astype(np.int64))
    return core


def test_every_single_bit_flip_of_a_saved_state_is_refused():
    core = _core()
    blob = core.save_state()
    before = (core.steps, core.membrane().copy(), core.current("readout").copy())
    refused = 0
    for i in range(len(blob) * 8):
        bad = bytearray(blob)
        bad[i // 8] ^= 1 << (i % 8)
        with pytest.raises(CoreInputError, match="state"):
            core.load_state(bytes(bad))
        refused += 1
    assert refused == len(blob) * 8 == 8 * (16 + 16 + 20 + 6 * 6 + 4 * 3 + 16 + 4 * 6 + 36 + 18 + 4)
    # nothing of a refused blob was written
    assert core.steps == before[0]
    assert np.array_equal(core.membrane(), before[1]) and np.array_equal(core.current("readout"), before[2])
    assert core.save_state() == blob
    core.load_state(blob)  # the intact blob still loads


def _c_error(core, blob) -> str:
    with pytest.raises(CoreInputError) as e:
        core.load_state(blob)
    return str(e.value)


def _recrc(b: bytearray) -> bytes:
    b[-4:] = struct.pack("<I", zlib.crc32(bytes(b[:-4])))
    return bytes(b)


def test_malformed_blobs_are_refused_with_what_is_wrong():
    core = _core()
    blob = core.save_state()
    v1 = bytearray(blob)
    v1[4:8] = struct.pack("<I", 1)
    assert "version 1" in _c_error(core, _recrc(v1))
    v9 = bytearray(blob)
    v9[4:8] = struct.pack("<I", 9)
    assert "unknown version" in _c_error(core, _recrc(v9))
    assert "bad magic" in _c_error(core, b"XXXX" + blob[4:])
    assert "length field" in _c_error(core, blob + b"\0")
    assert "too short" in _c_error(core, blob[:10])
    crc = bytearray(blob)
    crc[40] ^= 0x10
    assert "checksum" in _c_error(core, bytes(crc))
    # a blob of another core's sizes (valid CRC) names the sizes
    other = _core(n_hid=7).save_state()
    assert "other sizes" in _c_error(core, other)
    # weight out of range behind a valid CRC
    w = bytearray(blob)
    w[-5] = 100
    assert "weight outside" in _c_error(core, _recrc(w))
    # unknown section flags
    fl = bytearray(blob)
    fl[20:24] = struct.pack("<I", 3)
    assert "unknown flags" in _c_error(core, _recrc(fl))


def test_unknown_optional_sections_are_skipped_required_refused():
    core = _core()
    blob = core.save_state()
    traces = bytes(range(50))
    with_opt = stateblob.with_sections(blob, [Section("LRN1", False, traces)])
    assert stateblob.section(with_opt, "LRN1").payload == traces
    fresh = _core(seed=4)
    fresh.load_state(with_opt)
    assert fresh.save_state() == blob  # the core's part restored exactly, the extra skipped
    with_req = stateblob.with_sections(blob, [Section("LRN1", True, traces)])
    assert "required section" in _c_error(fresh, with_req)
    # sections may come in any order
    secs = stateblob.parse(with_opt)
    fresh.load_state(stateblob.build(secs[::-1]))
    assert fresh.save_state() == blob
    # a known section twice is refused (built by hand: build() refuses it too)
    twice = bytearray(stateblob.build(secs))
    core_sec = struct.pack("<4sIQ", b"CORE", 1, len(secs[0].payload)) + secs[0].payload
    twice[16:16] = core_sec
    twice[8:16] = struct.pack("<Q", len(twice))
    assert "twice" in _c_error(fresh, _recrc(twice))
    with pytest.raises(ValueError, match="CORE and WGHT belong to the core"):
        stateblob.with_sections(blob, [Section("CORE", True, b"")])


def test_python_parser_refuses_what_c_refuses():
    core = _core()
    blob = core.save_state()
    for bad, msg in ((blob[:-1] + bytes([blob[-1] ^ 1]), "checksum"), (b"SWST" + blob[4:12], "too short"),
                     (blob + b"x", "length field")):
        with pytest.raises(StateBlobError, match=msg):
            stateblob.parse(bad)
    v1 = bytearray(blob)
    v1[4:8] = struct.pack("<I", 1)
    with pytest.raises(StateBlobError, match="version 1"):
        stateblob.parse(_recrc(v1))


def test_sw_crc32_is_zlib_crc32():
    for data in (b"", b"a", b"123456789", bytes(range(256)) * 3):
        out = ffi.new("uint32_t *")
        assert lib.sw_crc32(ffi.from_buffer(data) if data else ffi.NULL, len(data), out) == lib.SW_OK
        assert out[0] == zlib.crc32(data)
    assert zlib.crc32(b"123456789") == 0xCBF43926  # the standard check value


@SETTINGS
@given(networks(max_n=12))
def test_reference_writes_the_same_blob_and_both_resume_identically(net):
    cfg, chip, seed, T, density, wscale = net
    core, ref, ev = make(cfg, chip, seed, T, density, wscale)
    core.run(ev)
    ref.run(ev.indptr, ev.channels)
    blob = core.save_state()
    assert ref.save_state() == blob
    dec = stateblob.decode_core(stateblob.section(blob, "CORE").payload)
    assert dec.steps == T and np.array_equal(dec.h_V, core.membrane()) and np.array_equal(dec.o_I, core.current("readout"))
    # a fresh reference loaded from the C blob continues exactly like the C core
    ref2 = ReferenceCore(cfg, *core.params)
    ref2.load_state(blob)
    core2 = Core(cfg, chip)
    core2.load_state(blob)
    rng = np.random.default_rng(seed + 1)
    raster = (rng.random((10, cfg.n_in)) < 0.3).astype(np.int64)
    from spikewire.core import Events
    ev2 = Events.from_raster(raster)
    a = core2.run(ev2, record_hidden_v=True)
    b = ref2.run(ev2.indptr, ev2.channels)
    assert all(np.array_equal(x, y) for x, y in zip((a.spikes, a.hid_v, a.out_v, a.cadc), b))
    assert ref2.save_state() == core2.save_state()
