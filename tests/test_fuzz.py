"""Property/fuzz tests of every decoder that faces the network or a file (issue #12).

Each decoder, given anything, returns a valid value or raises its one documented error type,
and its memory stays bounded by the input (``tracemalloc`` peaks: numpy reports its buffers to
it; deterministic, unlike timing). Examples are modest and derandomized, so a CI run is
reproducible; nothing here measures time.

Decoders: network JSON (:func:`spikewire.wire.decode_json_object`), control requests
(:func:`spikewire.control.parse_control`), keyword events, binary spike batches, model files
(container and header semantics), WAV headers (and the sample rate they carry into the front
end), and core state blobs.
"""
from __future__ import annotations

import json
import struct
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from spikewire import wire
from spikewire.audio import AudioFileError, read_wav, read_wav_info
from spikewire.config import CoreConfig
from spikewire.control import ControlCommand, ControlPayloadError, parse_control
from spikewire.core import Core, CoreError
from spikewire.frontend import FrontEndConfig, SampleRateError, check_input_rate
from spikewire.wire import PayloadError

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def peak_of(fn):
    """(peak traced bytes, result or raised exception) of ``fn()``."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - the caller checks the type
            out = e
        return tracemalloc.get_traced_memory()[1], out
    finally:
        tracemalloc.stop()


# --- network JSON -------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers(-2**70, 2**70) | \
    st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=60)


def depth(v) -> int:
    if isinstance(v, dict):
        return 1 + max((depth(x) for x in v.values()), default=0)
    if isinstance(v, list):
        return 1 + max((depth(x) for x in v), default=0)
    return 0


@FUZZ
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_json_objects_round_trip_within_the_limits(doc):
    data = json.dumps(doc).encode()
    if depth(doc) <= wire.MAX_JSON_DEPTH:
        assert wire.decode_json_object(data, "x payload") == doc
    if depth(doc) > 1:
        with pytest.raises(PayloadError, match="deeper than 1"):
            wire.decode_json_object(data, "x payload", max_depth=1)


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_any_bytes_are_an_object_or_a_payload_error(data):
    peak, out = peak_of(lambda: wire.decode_json_object(data, "x payload"))
    assert isinstance(out, (dict, PayloadError)), repr(out)
    assert peak < 64 * len(data) + 65536


@pytest.mark.parametrize("payload, msg", [
    (b"[" * 10_000, "nests arrays/objects deeper than 32"),    # dropped the MQTT session before (#12)
    (b'{"a":' * 33 + b"1" + b"}" * 33, "deeper than 32"),
    (b"[" * 1_000_000, "is 1000000 bytes, more than 65536"),
    (json.dumps({"cmd": "pause", "pad": "x" * 70_000}).encode(), "more than 65536"),
    (b'{"cmd": "pause", "x": NaN}', "non-standard JSON constant NaN"),
    (b'{"cmd": "pause", "x": -Infinity}', "non-standard JSON constant -Infinity"),
    (b"\xff\xfe{}", "not JSON"),
    (12, "must be bytes or text, got int"),
])
def test_json_limits(payload, msg):
    peak, out = peak_of(lambda: wire.decode_json_object(payload, "control payload", ControlPayloadError))
    assert isinstance(out, ControlPayloadError) and msg in str(out), out
    assert "x" * 100 not in str(out)  # the message never carries the payload
    assert peak < 4 * 1024 * 1024


def test_brackets_inside_strings_do_not_count_as_depth():
    doc = {"s": "[" * 1000 + '\\"{' * 100, "t": ['"]]]', "\\"]}
    assert wire.decode_json_object(json.dumps(doc).encode(), "x") == doc


@FUZZ
@given(st.dictionaries(st.sampled_from(["cmd", "id", "path", "word", "x"]), json_values, max_size=4))
def test_control_requests_parse_or_fail_clearly(doc):
    out = peak_of(lambda: parse_control(json.dumps(doc).encode()))[1]
    if isinstance(out, ControlCommand):
        assert out.cmd == doc["cmd"] and isinstance(out.cmd, str) and out.cmd
        assert out.id == doc.get("id") and "cmd" not in out.args and "id" not in out.args
    else:
        assert isinstance(out, ControlPayloadError), repr(out)
        rid = doc.get("id")
        if isinstance(rid, (str, int)) and not isinstance(rid, bool) and depth(doc) <= wire.MAX_JSON_DEPTH:
            assert out.request_id == rid  # the reply can name the request


@FUZZ
@given(st.dictionaries(st.sampled_from(["word", "score", "t_start", "t_end", "model", "seq", "session", "x"]),
                       json_values, max_size=8) | json_values)
def test_keyword_payloads_decode_or_fail_clearly(doc):
    out = peak_of(lambda: wire.decode_keyword(json.dumps(doc).encode()))[1]
    assert isinstance(out, (dict, PayloadError)), repr(out)


# --- binary spike batches -------------------------------------------------------

U32, U64 = 2**32 - 1, 2**64 - 1
edge32 = st.sampled_from([0, 1, 2, 255, 256, 65535, 65536, 65537, 2**31, U32]) | st.integers(0, U32)
edge64 = st.sampled_from([0, 1, 2**53, 2**63 - 1, 2**63, U64 - 1, U64]) | st.integers(0, U64)


@FUZZ
@given(magic=st.sampled_from([wire.SPIKE_MAGIC, b"SWSC", b"\0\0\0\0"]), version=st.sampled_from([1, 1, 1, 0, 2, 255]),
       flags=st.sampled_from([0, 0, 1, 1, 2, 0x81]), population=st.integers(0, 65535), n_units=edge32,
       n_steps=edge32, t0=edge64, n_records=st.sampled_from([0, 1, 2, 3, 7]) | st.integers(0, U32),
       body=st.binary(max_size=64), body_len=st.sampled_from(["exact", "exact", "short", "long", "random"]))
def test_spike_batch_headers(magic, version, flags, population, n_units, n_steps, t0, n_records, body, body_len):
    rec = 8 if flags & 1 else 4
    want = n_records * rec
    if body_len == "exact" and want <= 4096:
        body = (body * (want // max(len(body), 1) + 1))[:want] if body else bytes(want)
    elif body_len == "short" and want:
        body = bytes(min(want, 4096) - 1)
    elif body_len == "long":
        body = bytes(min(want, 4096) + 1)
    data = wire.SPIKE_HEADER.pack(magic, version, flags, population, n_units, n_steps, t0, n_records) + body
    peak, out = peak_of(lambda: wire.decode_spike_batch(data))
    assert peak < 64 * len(data) + 65536, f"{peak} bytes for a {len(data)}-byte batch"
    if isinstance(out, PayloadError):
        return
    assert isinstance(out, wire.SpikeBatch), repr(out)
    assert out.n_steps >= 1 and out.n_units >= 1 and out.t0 + out.n_steps <= 2**64
    assert out.steps.size == out.units.size == n_records
    if out.steps.size:
        assert int(out.steps.max()) < out.n_steps and int(out.units.max()) < out.n_units
        key = out.steps.astype(np.uint64) << np.uint64(32) | out.units
        assert np.all(key[1:] >= key[:-1])


@FUZZ
@given(st.data())
def test_mutated_spike_batches(data):
    n_steps = data.draw(st.integers(1, 300))
    n_units = data.draw(st.integers(1, 70000))
    k = data.draw(st.integers(0, 20))
    steps = data.draw(st.lists(st.integers(0, n_steps - 1), min_size=k, max_size=k))
    units = data.draw(st.lists(st.integers(0, n_units - 1), min_size=k, max_size=k))
    good = bytearray(wire.encode_spike_batch(data.draw(edge64.filter(lambda t: t + n_steps <= 2**64)),
                                             n_steps, steps, units, n_units=n_units))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(good) - 1))
        good[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(good)))
    payload = bytes(good[:cut] if data.draw(st.booleans()) else good)
    out = peak_of(lambda: wire.decode_spike_batch(payload))[1]
    assert isinstance(out, (wire.SpikeBatch, PayloadError)), repr(out)


# --- model files ------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_parts(tmp_path_factory):
    from conftest import make_tiny_model
    from spikewire.modelfile import load_container

    path = tmp_path_factory.mktemp("fuzzmodel") / "m.swm"
    make_tiny_model().save(path)
    return load_container(path)


HEADER_FIELDS = ["name", "vocabulary", "has_none_unit", "frontend", "core", "decision", "training", "metrics",
                 "kind", "schema_version"]


@settings(FUZZ, max_examples=60)
@given(field=st.sampled_from(HEADER_FIELDS), value=json_values, sub=st.booleans(), data=st.data())
def test_model_headers_load_or_fail_clearly(tmp_path, model_parts, field, value, sub, data):
    """Any value in any header field (or in a key of the front-end / core / decision objects)."""
    from spikewire.model import Model, ModelFileError
    from spikewire.modelfile import save_container

    header, arrays = json.loads(json.dumps(model_parts[0])), model_parts[1]
    if sub and isinstance(header.get(field), dict) and header[field]:
        key = data.draw(st.sampled_from(sorted(header[field])))
        header[field][key] = value
    elif field == "schema_version" and not isinstance(value, int):
        return  # the container refuses it when saving (tested in test_modelfile.py)
    else:
        header[field] = value
    path = tmp_path / "fuzz.swm"
    try:
        save_container(path, header, arrays)
    except (ValueError, TypeError):
        return  # not a header the writer produces
    out = peak_of(lambda: Model.load(path))[1]
    assert isinstance(out, (Model, ModelFileError)), repr(out)
    if isinstance(out, Model):
        assert all(isinstance(w, str) and w for w in out.vocabulary)
        assert isinstance(out.has_none_unit, bool)


@settings(FUZZ, max_examples=40)
@given(name=st.sampled_from(["w_in", "w_out", "hid_v_th", "out_gain_mem"]), data=st.data())
def test_model_arrays_load_or_fail_clearly(tmp_path, model_parts, name, data):
    from spikewire.model import Model, ModelFileError
    from spikewire.modelfile import save_container

    header, arrays = model_parts
    arrays = dict(arrays)
    a = arrays[name]
    kind = data.draw(st.sampled_from(["shape", "dtype", "values"]))
    if kind == "shape":
        arrays[name] = np.zeros(data.draw(st.lists(st.integers(0, 5), min_size=0, max_size=3)), a.dtype)
    elif kind == "dtype":
        arrays[name] = a.astype(data.draw(st.sampled_from(["int8", "int16", "int32", "float32", "uint8"])))
    else:
        info = np.iinfo(a.dtype)
        arrays[name] = np.full(a.shape, data.draw(st.integers(int(info.min), int(info.max))), a.dtype)
    path = tmp_path / "fuzz.swm"
    save_container(path, header, arrays)
    out = peak_of(lambda: Model.load(path))[1]
    assert isinstance(out, (Model, ModelFileError)), repr(out)


# --- WAV headers --------------------------------------------------------------------

@FUZZ
@given(tag=st.sampled_from([1, 3, 0xFFFE, 0, 2, 6, 0xFFFF]), channels=st.sampled_from([0, 1, 2, 7, 65535]),
       rate=st.sampled_from([0, 1, 999, 1000, 8000, 11025, 44100, 96001, 383998, 384000, 384001, 2**32 - 1])
       | st.integers(0, 2**32 - 1),
       bits=st.sampled_from([0, 8, 12, 16, 24, 32, 64]), block_align=st.integers(0, 65535),
       fmt_size=st.sampled_from([16, 18, 40, 0, 12, 2**32 - 1]), data_size=st.sampled_from([0, 4, 6, 2**32 - 1])
       | st.integers(0, 2**32 - 1), data_len=st.integers(0, 64))
def test_wav_headers_read_or_fail_clearly(tmp_path, tag, channels, rate, bits, block_align, fmt_size, data_size,
                                         data_len):
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * max(block_align, 1) & U32, block_align, bits)
    if tag == 0xFFFE:
        fmt += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", 1) + \
            b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    body = b"WAVE" + b"fmt " + struct.pack("<I", fmt_size) + fmt + b"data" + struct.pack("<I", data_size) + \
        bytes(range(data_len))
    p = tmp_path / "h.wav"
    p.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    peak, out = peak_of(lambda: read_wav(p))
    assert peak < 64 * p.stat().st_size + 65536
    if isinstance(out, AudioFileError):
        return
    assert not isinstance(out, Exception), repr(out)
    x, r = out
    assert x.dtype == np.float32 and x.ndim == 1 and np.all(np.abs(x) <= 1.0)
    assert read_wav_info(p).rate == r == rate
    # the rate from a header that parsed goes into the front end: accepted or a SampleRateError,
    # decided from scalars (nothing allocated)
    peak, out = peak_of(lambda: check_input_rate(FrontEndConfig(), r))
    assert out is None or isinstance(out, SampleRateError), repr(out)
    assert peak < 65536


# --- core state blobs -------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_core():
    core = Core(CoreConfig(n_in=8, n_hid=6, n_out=3))
    core.run(np.random.default_rng(0).random((20, 8)) < 0.5)
    return core, core.save_state()


@FUZZ
@given(data=st.data())
def test_state_blobs_load_or_fail_without_touching_the_core(saved_core, data):
    core, blob = saved_core
    kind = data.draw(st.sampled_from(["flip", "byte", "truncate", "extend", "random"]))
    b = bytearray(blob)
    if kind == "flip":
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] ^= 1 << data.draw(st.integers(0, 7))
    elif kind == "byte":
        b[data.draw(st.integers(0, len(b) - 1))] = data.draw(st.integers(0, 255))
    elif kind == "truncate":
        b = b[:data.draw(st.integers(0, len(b) - 1))]
    elif kind == "extend":
        b += data.draw(st.binary(min_size=1, max_size=16))
    else:
        b = bytearray(data.draw(st.binary(max_size=2 * len(blob))))
    assume(bytes(b) != blob)
    before = core.save_state()
    peak, out = peak_of(lambda: core.load_state(bytes(b)))
    assert peak < 16 * len(b) + 65536
    if out is None:  # accepted (only a blob of the right layout): the core still runs and saves
        core.run(np.zeros((3, 8), bool))
        assert len(core.save_state()) == len(blob)
        core.load_state(blob)
        return
    assert isinstance(out, (CoreError, ValueError)), repr(out)
    assert core.save_state() == before  # a refused blob changes nothing
