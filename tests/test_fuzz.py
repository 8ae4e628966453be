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


# --- learning checkpoints (runtime/checkpoint.py) ------------------------------------------------

CK_SIZES = dict(n_in=6, n_hid=5, n_out=3)


@pytest.fixture(scope="module")
def ck_parts():
    """A good checkpoint's sections (CORE, WGHT, LCFG, LACC, LWGT) and its LCFG document."""
    from spikewire import checkpoint as ck
    from spikewire import stateblob
    from spikewire.learning import LearningConfig

    core = Core(CoreConfig(**CK_SIZES))
    core.run(np.random.default_rng(1).random((10, CK_SIZES["n_in"])) < 0.5)
    shapes = {"in": (6, 5), "rec": (5, 5), "out": (5, 3)}
    rng = np.random.default_rng(2)
    learner = {"weights": {m: rng.integers(-63, 64, s).astype(np.int8) for m, s in shapes.items()},
               "acc": {m: rng.integers(-1000, 1000, s).astype(np.int32) for m, s in shapes.items()},
               "steps": 123, "commits": 7}
    blob = ck.encode(core.save_state(), model_name="m", base="b" * 64, lc=LearningConfig(), passes=2,
                     learner=learner, counts={"labels": 3})
    assert ck.decode(blob, base="b" * 64, **CK_SIZES).steps == 123
    secs = stateblob.parse(blob)
    return secs, json.loads(next(s.payload for s in secs if s.tag == ck.LCFG))


def _check_checkpoint(blob):
    from spikewire import checkpoint as ck
    from spikewire.learning import LearningConfig

    peak, out = peak_of(lambda: ck.decode(blob, **CK_SIZES))
    assert peak < 16 * len(blob) + (1 << 20)
    if isinstance(out, ck.CheckpointError):
        assert len(str(out)) < 400, str(out)[:400]  # never the payload
        return None
    assert isinstance(out, ck.Checkpoint), repr(out)
    assert isinstance(out.learning, LearningConfig) and 0 <= out.steps <= 2**62 and 0 <= out.commits < ck.MAX_COMMITS
    assert 1 <= out.meta["passes"] <= 100 and isinstance(out.meta.get("counts", {}), dict)
    assert all(np.abs(w.astype(np.int64)).max() <= 63 for w in out.weights.values())
    Core(CoreConfig(**CK_SIZES)).load_state(out.core_blob)   # what the pipeline hands the core loads
    return out


@FUZZ
@given(field=st.sampled_from(["schema", "model", "base", "learning", "passes", "steps", "commits", "counts",
                              "t_unix", "extra"]),
       value=json_values, sub=st.booleans(), drop=st.booleans(), data=st.data())
def test_checkpoint_lcfg_values_load_or_fail_clearly(ck_parts, field, value, sub, drop, data):
    """Any JSON value in any LCFG field (or in a LearningConfig key), with a valid CRC around it."""
    from spikewire import stateblob

    secs, meta = ck_parts
    meta = json.loads(json.dumps(meta))
    if drop:
        meta.pop(field, None)
    elif sub and field == "learning":
        meta["learning"][data.draw(st.sampled_from(sorted(meta["learning"]) + ["x"]))] = value
    else:
        meta[field] = value
    lcfg = stateblob.Section("LCFG", False, json.dumps(meta).encode())
    _check_checkpoint(stateblob.build([lcfg if s.tag == "LCFG" else s for s in secs]))


@FUZZ
@given(data=st.data())
def test_checkpoint_sections_load_or_fail_clearly(ck_parts, data):
    """Sections dropped, duplicated payloads, wrong lengths, extreme values, a required flag, raw LCFG bytes
    (deep nesting, not UTF-8, huge), all inside a blob whose CRC is right."""
    from spikewire import stateblob

    secs, _ = ck_parts
    secs = list(secs)
    kind = data.draw(st.sampled_from(["drop", "payload", "extreme", "required", "lcfg", "extra"]))
    i = data.draw(st.integers(0, len(secs) - 1))
    s = secs[i]
    if kind == "drop":
        del secs[i]
    elif kind == "payload":
        n = data.draw(st.sampled_from([0, 1, len(s.payload) - 1, len(s.payload), len(s.payload) + 1, 5000]))
        secs[i] = s._replace(payload=data.draw(st.binary(min_size=min(n, 64), max_size=min(n, 64))) * (n // 64 + 1))
        secs[i] = secs[i]._replace(payload=secs[i].payload[:n])
    elif kind == "extreme":
        fill = data.draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF]))
        secs[i] = s._replace(payload=bytes([fill]) * len(s.payload))
    elif kind == "required":
        secs[i] = s._replace(required=not s.required)
    elif kind == "lcfg":
        raw = data.draw(st.sampled_from([b"[" * 100_000, b"{}", b"\xff\xfe", b"null", b'{"schema": 1}' + b" " * 70_000,
                                         json.dumps({"schema": 1, "x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}).encode()])
                        | st.binary(max_size=200))
        secs = [x._replace(payload=raw) if x.tag == "LCFG" else x for x in secs]
    else:
        secs.append(stateblob.Section(data.draw(st.sampled_from(["XTRA", "LACC", "CORE"])),
                                      data.draw(st.booleans()), data.draw(st.binary(max_size=40))))
    try:
        blob = stateblob.build(secs)
    except ValueError:
        return  # two sections of one tag: the writer refuses it (the parser too: tests above)
    _check_checkpoint(blob)


# --- spike recordings (file: sink, runtime/sinks.py read_spike_file) -------------------------------

def _spike_file() -> bytes:
    from spikewire import sinks
    from spikewire.events import Events

    ev = Events.from_raster(np.random.default_rng(0).integers(0, 2, (6, 4)))
    hid = np.random.default_rng(1).integers(0, 2, (6, 3)).astype(np.uint8)
    return (sinks._FILE_HEAD.pack(sinks.FILE_MAGIC, sinks.FILE_VERSION, 0, 0)
            + sinks._json_frame({"event": "header", "model": "m", "n_hid": 3})
            + sinks.encode_block_frame(10, ev, hid, 4) + sinks.encode_block_frame(16, ev, hid, 4)
            + sinks._json_frame({"event": "end"}))


@FUZZ
@given(data=st.data())
def test_spike_files_read_or_fail_clearly(tmp_path, data):
    from spikewire import sinks

    good = bytearray(_spike_file())
    kind = data.draw(st.sampled_from(["bytes", "truncate", "block", "json"]))
    if kind == "bytes":
        for _ in range(data.draw(st.integers(1, 4))):
            good[data.draw(st.integers(0, len(good) - 1))] = data.draw(st.integers(0, 255))
        body = bytes(good)
    elif kind == "truncate":
        body = bytes(good[:data.draw(st.integers(0, len(good)))])
    elif kind == "block":   # a block frame with any header fields and a body of the length it claims (<= 4 kB)
        t0, T, n_in, nh = (data.draw(edge64), data.draw(edge32), data.draw(edge32), data.draw(edge32))
        n_i, n_h = data.draw(st.integers(0, 40)), data.draw(st.integers(0, 40))
        recs = data.draw(st.binary(min_size=8 * (n_i + n_h), max_size=8 * (n_i + n_h)))
        payload = sinks._BLOCK.pack(t0, T, n_in, nh, n_i, n_h) + recs
        body = bytes(good[:8]) + sinks._FRAME.pack(sinks.FRAME_BLOCK, 0, 0, len(payload)) + payload
    else:
        doc = data.draw(json_values | st.dictionaries(st.sampled_from(["event", "n_hid"]), json_values, max_size=2))
        raw = json.dumps(doc).encode() if data.draw(st.booleans()) else data.draw(st.sampled_from(
            [b"[" * 50_000, b"\xff", b"NaN", b'{"event": "header", "n_hid": 1e400}']))
        body = bytes(good[:8]) + sinks._FRAME.pack(sinks.FRAME_JSON, 0, 0, len(raw)) + raw + bytes(good[8:])
    p = tmp_path / "f.swsf"
    p.write_bytes(body)
    peak, out = peak_of(lambda: sinks.read_spike_file(p))
    assert peak < 64 * len(body) + (1 << 20), peak
    if isinstance(out, ValueError):
        return
    assert isinstance(out, sinks.SpikeRecording), repr(out)
    assert isinstance(out.n_hid, int) and 0 <= out.n_hid <= sinks.MAX_FILE_UNITS
    assert all(0 <= t0 and t0 + n <= sinks.MAX_FILE_T_END for t0, n in out.blocks)
    # the recording's own accessors: a result or a ValueError naming the range, never a huge allocation
    for fn in (out.input_events, out.hidden_raster):
        peak, got = peak_of(fn)
        assert peak < 64 * len(body) + (1 << 26) and not (isinstance(got, Exception) and not isinstance(got, ValueError)), \
            repr(got)


# --- the learning commands over control (learn, label, reward, revert, save, stretches) -----------------

LEARN_ARGS = ["on", "rule", "matrices", "rate_in", "rate_rec", "rate_out", "signal_shift", "feedback", "weights",
              "target_hi", "target_lo", "surrogate_log2", "trace_shift", "passes", "si", "si_c_log2", "si_xi_log2",
              "word", "stretch", "value", "x"]
arg_values = st.one_of(json_values, st.sampled_from([True, False, 0, 1, -1, 2, 12, 30, 31, 100, 101, 2**62, "eprop",
                                                     "readout", "superspike", "random", "stochastic", "low", "high",
                                                     ["in"], ["out"], ["in", "rec", "out"], ["in", "in"]]))


@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_learning_commands_with_any_arguments(tmp_path, tiny_model_path, data):
    """A running pipeline with learning on and a checkpoint file gets 25 learning commands with any
    arguments (names and values drawn from the real ones, wrong types, out of range): every one is
    answered with a short reply, the live learning configuration always stays a valid one, the replay
    passes stay in 1..100, and the pipeline keeps streaming and answers ``status`` at the end."""
    import asyncio

    from conftest import DIGITS_WAV
    from spikewire.learning import LearningConfig
    from spikewire.pipeline import Pipeline
    from spikewire.sources import WavSource

    pipe = Pipeline(str(tiny_model_path), WavSource(DIGITS_WAV, fast=False, speed=8.0), [], metrics_interval=0,
                    learn=True, checkpoint=str(tmp_path / "ck.swc"))

    async def go():
        task = asyncio.create_task(pipe.run())
        while not pipe._running:
            await asyncio.sleep(0.01)
        replies = []
        try:
            for i in range(25):
                cmd = data.draw(st.sampled_from(["learn", "learn", "label", "reward", "revert", "consolidate", "save",
                                                 "stretches"]))
                args = data.draw(st.dictionaries(st.sampled_from(LEARN_ARGS), arg_values, max_size=3))
                payload = json.dumps({"cmd": cmd, "id": i, **args}, allow_nan=False)
                r = json.loads(await pipe.commands.handle(payload, timeout=10))
                assert r["id"] == i and isinstance(r["ok"], bool), r
                assert r["ok"] or len(r["error"]) < 400, r["error"][:400]
                replies.append(r)
                s = pipe.learning
                assert LearningConfig.from_dict(s.lc.to_dict()) == s.lc and 1 <= s.replay_config.passes <= 100
                assert not task.done()
            steps = pipe.metrics_snapshot()["steps"]
            while pipe.metrics_snapshot()["steps"] == steps:   # still streaming
                await asyncio.sleep(0.01)
            end = json.loads(await pipe.commands.handle('{"cmd": "status", "id": "end"}'))
        finally:
            pipe.request_stop()
            await task
        return replies, end

    replies, end = asyncio.run(asyncio.wait_for(go(), 90))
    assert end["ok"] is True and end["result"]["learning"]["on"] in (True, False)


# --- Home Assistant discovery ([mqtt.homeassistant] and the configs built from a model) ------------------

@FUZZ
@given(table=json_values | st.dictionaries(st.sampled_from(["discovery", "prefix", "x"]), json_values, max_size=3),
       vocabulary=st.lists(st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1,
                                   max_size=64), min_size=1, max_size=12, unique=True))
def test_home_assistant_settings_and_configs(table, vocabulary):
    """Any table is a Discovery, None or a ValueError naming it; the configs of any valid settings and any
    vocabulary a model may hold are JSON objects under the prefix, with the vocabulary as data only."""
    from spikewire import hass
    from spikewire.wire import Topics

    try:
        d = hass.Discovery.from_options(table)
    except ValueError as e:
        assert len(str(e)) < 300, str(e)[:300]
        return
    if d is None:
        return
    msgs = hass.discovery_messages(d, Topics("fleet", "pi-01"), model="m", vocabulary=vocabulary, version="1")
    assert len(msgs) == len(hass.entities())
    for topic, payload in msgs:
        assert topic.startswith(d.prefix + "/") and topic.endswith("/config") and "/pi-01/" in topic
        if d.discovery:
            doc = json.loads(payload)
            assert doc["device"]["identifiers"] == ["spikewire_pi-01"]
            if "event_types" in doc:
                assert doc["event_types"] == vocabulary and doc["value_template"] == hass.EVENT_TEMPLATE
        else:
            assert payload == b""


# --- command lines from the terminal, a file or a FIFO (spikewire run --learn --commands PATH) ---------------

command_words = st.sampled_from(["learn", "label", "reward", "save", "revert", "stretches", "status", "reload",
                                 "snapshot", "help", "on", "off", "+1", "-1", "1", "7", "-3", "low", "x=1",
                                 "rate_in=12", "matrices=in,out", "on=yes", "id=3", "cmd=pause", "=", "a=", "#"])


@FUZZ
@given(st.text(max_size=300) | st.lists(command_words | st.text(max_size=8), max_size=6).map(" ".join)
       | st.integers(4090, 5000).map(lambda n: "label " + "w" * n))
def test_command_lines_parse_or_fail_clearly(line):
    """Any line is nothing (blank, comment), a request the MQTT parser also takes, or a ControlPayloadError;
    bounded: longer than MAX_COMMAND_LINE characters is refused before it is split."""
    from spikewire.control import MAX_COMMAND_LINE, parse_command_line

    peak, out = peak_of(lambda: parse_command_line(line, request_id=5))
    assert peak < 64 * len(line.encode("utf-8", "surrogatepass")) + 65536
    if out is None:
        assert not line.strip() or line.strip().startswith("#")
        return
    if isinstance(out, ControlPayloadError):
        assert len(str(out)) < 300 and (out.request_id in (5, None)), str(out)[:300]
        return
    assert isinstance(out, dict), repr(out)
    assert len(line) <= MAX_COMMAND_LINE
    got = peak_of(lambda: parse_control(json.dumps(out)))[1]   # what the channel does with it next
    assert isinstance(got, (ControlCommand, ControlPayloadError)), repr(got)
