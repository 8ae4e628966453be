"""Tests for runtime/wire.py: the pure codecs (broker URLs, topics, spike batches, keyword and metrics JSON).

No broker, no event loop. The connections that use these codecs are tested in test_mqtt.py,
the control protocol in test_control.py.
"""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spikewire.wire import (
    SPIKE_HEADER,
    PayloadError,
    SpikeBatch,
    Topics,
    decode_json_object,
    decode_keyword,
    decode_spike_batch,
    encode_keyword,
    encode_metrics,
    encode_spike_batch,
    encode_spike_raster,
    parse_mqtt_url,
)

REPO = Path(__file__).resolve().parents[1]
EVENT = {"word": "seven", "score": 0.875, "t_start": 1.25, "t_end": 1.75}


# ---------------------------------------------------------------------------
# URL parsing
# ---------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://broker/lab", dict(host="broker", port=1883, prefix="lab", tls=False, username=None)),
        ("mqtts://broker/lab", dict(port=8883, tls=True)),
        ("mqtt://u@h:1234/a/b/", dict(username="u", password=None, port=1234, prefix="a/b")),
        ("mqtt://u:p%40ss%3Aw@h/x", dict(username="u", password="p@ss:w")),
        ("mqtt://u:@h/x", dict(username="u", password="")),
        ("MQTT://[::1]:99/x", dict(host="::1", port=99)),
        ("mqtts://h/x?cafile=/ca.pem&certfile=/c.pem&keyfile=/k.pem&insecure=1",
         dict(ca_file="/ca.pem", cert_file="/c.pem", key_file="/k.pem", insecure=True)),
        ("mqtts://h/x?insecure=false", dict(insecure=False)),
    ],
)
def test_parse_url_ok(url, expected):
    parsed = parse_mqtt_url(url)
    for key, value in expected.items():
        assert getattr(parsed, key) == value, key


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("broker/lab", "missing scheme"),
        ("http://broker/lab", "unsupported scheme 'http'"),
        ("mqtt://broker", "missing topic prefix"),
        ("mqtt://broker/", "missing topic prefix"),
        ("mqtt:///lab", "missing host"),
        ("mqtt://broker:http/lab", "port 'http'"),
        ("mqtt://broker:0/lab", "port '0'"),
        ("mqtt://broker:70000/lab", "port '70000'"),
        ("mqtt://[::1/lab", "unterminated IPv6"),
        ("mqtt://broker/lab/+", "must not contain '+'"),
        ("mqtt://broker/a//b", "empty topic level"),
        ("mqtt://broker/$SYS", "must not start with '$'"),
        ("mqtt://broker/lab#frag", "'#' is not allowed"),
        ("mqtt://:pw@broker/lab", "empty user name"),
        ("mqtts://broker/lab?ca=/x", "unknown query option 'ca'"),
        ("mqtts://broker/lab?cafile=/a&cafile=/b", "given twice"),
        ("mqtts://broker/lab?insecure=maybe", "insecure='maybe'"),
        ("mqtts://broker/lab?keyfile=/k", "keyfile given without certfile"),
        ("mqtt://broker/lab?cafile=/ca.pem", "need the mqtts:// scheme"),
    ],
)
def test_parse_url_errors_name_the_part(url, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_mqtt_url(url)


def test_url_password_is_redacted():
    url = parse_mqtt_url("mqtts://alice:hunter2%21@h:8884/lab?cafile=/ca.pem")
    assert url.password == "hunter2!"
    for text in (repr(url), str(url), url.redacted()):
        assert "hunter2" not in text
        assert "alice:***@" in text
    with pytest.raises(ValueError) as err:
        parse_mqtt_url("mqtt://alice:hunter2@h:bad/lab")
    assert "hunter2" not in str(err.value)


def test_topics():
    t = Topics("lab/kws", "pi-01")
    assert t.keyword == "lab/kws/pi-01/keyword"
    assert t.spikes("hidden") == "lab/kws/pi-01/spikes/hidden"
    assert t.control_reply == "lab/kws/pi-01/control/reply"
    for bad in ("a/b", "", "x+", "#"):
        with pytest.raises(ValueError):
            Topics("lab", bad)
        with pytest.raises(ValueError):
            t.spikes(bad)


# ---------------------------------------------------------------------------
# Spike batch codec
# ---------------------------------------------------------------------------

def test_spike_batch_golden_bytes_match_docs():
    """The worked example in docs/mqtt.md, byte for byte."""
    data = encode_spike_batch(1000, 10, [3, 0, 3], [7, 5, 1], n_units=16, population=1)
    doc = (REPO / "docs" / "mqtt.md").read_text()
    block = re.search(r"(53 57 53 42 01 00 01 00[0-9a-f \n]+)", doc).group(1)
    assert data == bytes.fromhex(block)
    batch = decode_spike_batch(data)
    assert (batch.t0, batch.n_steps, batch.n_units, batch.population) == (1000, 10, 16, 1)
    assert batch.steps.tolist() == [0, 3, 3] and batch.units.tolist() == [5, 1, 7]
    assert batch.absolute_steps.tolist() == [1000, 1003, 1003]


def test_docs_decoder_example_runs():
    """Extract the stdlib decoder from docs/mqtt.md and run it on narrow and wide batches."""
    doc = (REPO / "docs" / "mqtt.md").read_text()
    code = re.search(r"<!-- example: spike-batch-decoder.*?-->\s*```python\n(.*?)```", doc, re.S).group(1)
    assert 8 <= len(code.strip().splitlines()) <= 14
    namespace: dict = {}
    exec(compile(code, "docs/mqtt.md", "exec"), namespace)
    decode = namespace["decode"]
    for n_units in (16, 70_000):  # narrow and wide records
        data = encode_spike_batch(2**40, 5, [4, 0, 2], [n_units - 1, 3, 0], n_units=n_units, population=2)
        assert decode(data) == (2, [(2**40, 3), (2**40 + 2, 0), (2**40 + 4, n_units - 1)])
    with pytest.raises(ValueError):
        decode(data[:-1])


def test_raster_round_trip_and_wide_form():
    rng = np.random.default_rng(0)
    raster = (rng.random((40, 300)) < 0.05).astype(np.uint8)
    batch = decode_spike_batch(encode_spike_raster(123, raster, population=0))
    np.testing.assert_array_equal(batch.to_raster(), raster)
    assert batch.n_units == 300 and batch.n_steps == 40
    wide = encode_spike_batch(0, 70_000, [69_999], [1], n_units=2)
    assert wide[5] == 1 and len(wide) == SPIKE_HEADER.size + 8
    assert decode_spike_batch(wide).steps.tolist() == [69_999]
    empty = encode_spike_raster(7, np.zeros((3, 4), dtype=bool))
    assert len(decode_spike_batch(empty)) == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(t0=-1, n_steps=1, steps=[], units=[]), ValueError, "t0=-1"),
        (dict(t0=0, n_steps=0, steps=[], units=[]), ValueError, "n_steps=0"),
        (dict(t0=2**64 - 1, n_steps=2, steps=[], units=[]), ValueError, "overflows u64"),
        (dict(t0=0, n_steps=4, steps=[4], units=[0], n_units=2), ValueError, "step offset 4 out of range"),
        (dict(t0=0, n_steps=4, steps=[0], units=[2], n_units=2), ValueError, "unit 2 out of range"),
        (dict(t0=0, n_steps=4, steps=[1, 2], units=[0], n_units=2), ValueError, "differ in length"),
        (dict(t0=0, n_steps=4, steps=[0.5], units=[0], n_units=2), TypeError, "must hold integers"),
        (dict(t0=0, n_steps=4, steps=[], units=[], population=70_000), ValueError, "population=70000"),
    ],
)
def test_encode_rejects_bad_input(kwargs, error, message):
    with pytest.raises(error, match=message):
        encode_spike_batch(**kwargs)


def _patched(data: bytes, offset: int, fmt: str, value) -> bytes:
    import struct

    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


GOOD = encode_spike_batch(1000, 10, [0, 3, 3], [5, 1, 7], n_units=16, population=1)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "too short: 0 bytes"),
        (GOOD[:27], "too short"),
        (b"XXXX" + GOOD[4:], "magic b'XXXX'"),
        (_patched(GOOD, 4, "<B", 2), "unsupported spike batch version 2"),
        (_patched(GOOD, 5, "<B", 0x82), "unknown flag bits 0x82"),
        (_patched(GOOD, 8, "<I", 0), "n_units is 0"),
        (_patched(GOOD, 12, "<I", 0), "n_steps is 0"),
        (_patched(GOOD, 16, "<Q", 2**64 - 5), "overflows u64"),
        (_patched(GOOD, 24, "<I", 4), "header says 4 records"),
        (GOOD[:-1], "length mismatch"),
        (GOOD + b"\0\0\0\0", "length mismatch"),
        (_patched(GOOD, 5, "<B", 1), "length mismatch"),  # WIDE flag: records would be 8 bytes
        (_patched(GOOD, 12, "<I", 3), "record 1: step offset 3 out of range"),
        (_patched(GOOD, 8, "<I", 6), "record 2: unit 7 out of range"),
        (_patched(GOOD, 28, "<H", 3), "record 1: before record 0"),
        (_patched(GOOD, 36, "<H", 2), "record 2: before record 1"),
        ("text", "must be bytes, got str"),
    ],
)
def test_decode_rejects_malformed(data, message):
    with pytest.raises(PayloadError, match=message):
        decode_spike_batch(data)


@st.composite
def spike_blocks(draw):
    n_steps = draw(st.integers(1, 70_000))
    n_units = draw(st.integers(1, 70_000))
    pairs = draw(st.sets(st.tuples(st.integers(0, n_steps - 1), st.integers(0, n_units - 1)), max_size=50))
    t0 = draw(st.integers(0, 2**64 - n_steps))
    pop = draw(st.integers(0, 2**16 - 1))
    return t0, n_steps, n_units, pop, sorted(pairs)


@settings(max_examples=200, deadline=None)
@given(spike_blocks())
def test_round_trip_property(block):
    t0, n_steps, n_units, pop, pairs = block
    shuffled = pairs[:]
    random.Random(len(pairs)).shuffle(shuffled)
    steps = [p[0] for p in shuffled]
    units = [p[1] for p in shuffled]
    batch = decode_spike_batch(encode_spike_batch(t0, n_steps, steps, units, n_units=n_units, population=pop))
    assert batch == SpikeBatch(t0, n_steps, n_units, np.array([p[0] for p in pairs], np.uint32),
                               np.array([p[1] for p in pairs], np.uint32), population=pop)


def _decode_only_payload_error(data: bytes) -> None:
    try:
        decode_spike_batch(data)
    except PayloadError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(data):
    _decode_only_payload_error(data)
    _decode_only_payload_error(GOOD[:28] + data)  # valid header, random records


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spike_blocks(), st.data())
def test_fuzz_truncations_and_bit_flips(block, data):
    t0, n_steps, n_units, pop, pairs = block
    payload = encode_spike_batch(t0, n_steps, [p[0] for p in pairs], [p[1] for p in pairs],
                                 n_units=n_units, population=pop)
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(PayloadError):
        decode_spike_batch(payload[:cut])
    flipped = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(payload) - 1))
        flipped[pos] ^= 1 << data.draw(st.integers(0, 7))
    _decode_only_payload_error(bytes(flipped))


# ---------------------------------------------------------------------------
# Keyword and metrics payloads
# ---------------------------------------------------------------------------

def test_keyword_codec():
    doc = decode_keyword(encode_keyword(EVENT, model="m", seq=3, session="s"))
    assert doc == {**EVENT, "model": "m", "seq": 3, "session": "s"}
    with pytest.raises(ValueError, match="misses score"):
        encode_keyword({"word": "x", "t_start": 0, "t_end": 1}, model="m", seq=0, session="s")
    with pytest.raises(ValueError, match="sink-owned keys: seq"):
        encode_keyword({**EVENT, "seq": 1}, model="m", seq=0, session="s")
    with pytest.raises(ValueError, match="score must be finite"):
        encode_keyword({**EVENT, "score": float("nan")}, model="m", seq=0, session="s")
    with pytest.raises(ValueError, match="t_start <= t_end"):
        encode_keyword({**EVENT, "t_end": 1.0}, model="m", seq=0, session="s")
    with pytest.raises(PayloadError, match="not JSON"):
        decode_keyword(b"\xff")


def test_keyword_stretch_id_round_trips_and_is_bounded():
    doc = decode_keyword(encode_keyword({**EVENT, "stretch": 41}, model="m", seq=0, session="s"))
    assert doc["stretch"] == 41
    assert "stretch" not in decode_keyword(encode_keyword(EVENT, model="m", seq=0, session="s"))
    for bad in (-1, 2 ** 53, True, "7", 1.5):
        with pytest.raises(ValueError, match="stretch"):
            encode_keyword({**EVENT, "stretch": bad}, model="m", seq=0, session="s")
        payload = json.dumps({**EVENT, "stretch": bad, "model": "m", "seq": 0, "session": "s"})
        with pytest.raises(PayloadError, match="stretch"):
            decode_keyword(payload)


def test_rejected_codec():
    from spikewire.wire import decode_rejected, encode_rejected

    ev = {"stretch": 12, "best": "seven", "score": 0.55, "t_start": 1.5, "t_end": 2.0, "reason": "margin"}
    assert decode_rejected(encode_rejected(ev, model="m", session="s")) == {**ev, "model": "m", "session": "s"}
    for change, msg in (({"reason": "bored"}, "reason"), ({"stretch": -3}, "stretch"), ({"best": ""}, "best"),
                        ({"t_end": 1.0}, "t_start <= t_end"), ({"score": float("inf")}, "finite")):
        with pytest.raises(ValueError, match=msg):
            encode_rejected({**ev, **change}, model="m", session="s")
    with pytest.raises(ValueError, match="sink-owned"):
        encode_rejected({**ev, "model": "x"}, model="m", session="s")
    with pytest.raises(PayloadError, match="misses best"):
        decode_rejected(json.dumps({"stretch": 1}))
    with pytest.raises(PayloadError, match="model and session"):
        decode_rejected(json.dumps(ev))
    with pytest.raises(PayloadError, match="more than 65536"):
        decode_rejected(b"{" + b" " * (1 << 17) + b"}")


def test_repeated_spikes_round_trip_as_counts():
    # an input channel may fire several times in one step: the count must survive
    data = encode_spike_batch(100, 4, steps=[2, 0, 2, 2], units=[1, 0, 1, 0], n_units=2)
    b = decode_spike_batch(data)
    assert b.steps.tolist() == [0, 2, 2, 2] and b.units.tolist() == [0, 0, 1, 1]
    assert b.to_raster().tolist() == [[1, 0], [0, 0], [1, 2], [0, 0]]


def test_metrics_codec():
    doc = json.loads(encode_metrics({"rtf": np.float32(0.25), "nan": math.inf, "n": np.int64(3)},
                                    t_wall=12.5, session="s", mqtt={"published": np.int64(1)}))
    assert doc == {"rtf": 0.25, "nan": None, "n": 3, "t_wall": 12.5, "session": "s", "mqtt": {"published": 1}}
    for reserved in ("t_wall", "session", "mqtt"):
        with pytest.raises(ValueError, match=f"reserved for the sink.*{reserved}|{reserved}.*reserved"):
            encode_metrics({reserved: 1}, t_wall=0.0, session="s", mqtt={})
    with pytest.raises(TypeError, match="must be a mapping"):
        encode_metrics([1], t_wall=0.0, session="s", mqtt={})
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        encode_metrics({"x": object()}, t_wall=0.0, session="s", mqtt={})


def test_decode_json_object_names_the_payload():
    assert decode_json_object(b'{"a": 1}', "thing") == {"a": 1}
    with pytest.raises(PayloadError, match="thing is not JSON"):
        decode_json_object(b"{", "thing")
    with pytest.raises(PayloadError, match="thing must be a JSON object, got list"):
        decode_json_object(b"[1]", "thing")


def test_wire_is_pure():
    """wire.py needs no MQTT client, no event loop and no other spikewire module (a fresh interpreter)."""
    code = ("import sys; import spikewire.wire; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('aiomqtt', 'paho', 'asyncio', 'ssl') "
            "or m in ('spikewire.mqtt', 'spikewire.control', 'spikewire.pipeline')); print(bad)")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_old_import_paths_are_the_same_objects():
    import spikewire.mqtt as mqtt
    import spikewire.wire as wire

    for name in wire.__all__:
        assert getattr(mqtt, name) is getattr(wire, name), name
