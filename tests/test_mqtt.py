"""Tests for runtime/mqtt.py: codecs and URL parsing (pure), then MqttSink against real mosquitto.

Broker tests use the fixtures in conftest.py (loopback only) and are skipped when
mosquitto is missing. Every network wait is bounded by ``asyncio.timeout``; no
assertion depends on timing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spikewire.mqtt import (
    SPIKE_HEADER,
    Backoff,
    MqttAuthError,
    MqttSink,
    MqttTlsError,
    PayloadError,
    SpikeBatch,
    Topics,
    decode_keyword,
    decode_spike_batch,
    encode_keyword,
    encode_spike_batch,
    encode_spike_raster,
    parse_mqtt_url,
)

try:
    import aiomqtt  # only the broker tests use it; their fixtures skip without it
except ImportError:
    aiomqtt = None

REPO = Path(__file__).resolve().parents[1]
FAST = Backoff(initial=0.05, maximum=0.5)


def run(coro, timeout: float = 20.0):
    """Run a coroutine in a fresh loop with an overall deadline (a hang fails, it never blocks the suite)."""

    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


@pytest.fixture
def prefix() -> str:
    return f"swtest/{uuid.uuid4().hex[:8]}"


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


def test_url_keyword_overrides_and_missing_ca_file(tmp_path):
    url = parse_mqtt_url("mqtts://h/x?cafile=/nope.pem", ca_file=str(tmp_path / "missing.pem"))
    assert url.ca_file.endswith("missing.pem")
    with pytest.raises(ValueError, match="cannot load CA file .*missing.pem"):
        url.ssl_context()


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
# Keyword and control payloads (no broker)
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


def test_backoff_is_capped_and_jittered():
    b = Backoff(initial=0.1, maximum=2.0, factor=2.0, jitter=0.5)
    rng = random.Random(1)
    for attempt in range(1, 200):
        base = min(2.0, 0.1 * 2 ** (attempt - 1))
        d = b.delay(attempt, rng)
        assert 0.5 * base <= d <= base
    assert len({round(b.delay(10, rng), 6) for _ in range(20)}) > 1
    with pytest.raises(ValueError):
        Backoff(initial=0)


# ---------------------------------------------------------------------------
# Against a real broker
# ---------------------------------------------------------------------------

class Subscriber:
    """A test-side aiomqtt subscriber that records (topic, payload, retain)."""

    def __init__(self, broker, *topics: str, **kwargs):
        self.client = aiomqtt.Client(**broker.client_kwargs(), **kwargs)
        self.topics = topics
        self.messages: list[tuple[str, bytes, bool]] = []
        self._new = asyncio.Event()
        self._task = None

    async def __aenter__(self):
        await self.client.__aenter__()
        for topic in self.topics:
            await self.client.subscribe(topic, qos=1)
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc):
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.client.__aexit__(None, None, None)

    async def _collect(self):
        async for m in self.client.messages:
            self.messages.append((str(m.topic), bytes(m.payload), bool(m.retain)))
            self._new.set()

    async def wait_for(self, predicate, timeout: float = 5.0):
        """Wait until predicate(messages) is truthy; return its value."""
        async with asyncio.timeout(timeout):
            while not (result := predicate(self.messages)):
                self._new.clear()
                await self._new.wait()
        return result

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p, _ in self.messages if t == topic]


def test_keyword_spikes_metrics_arrive(mqtt_broker, prefix):
    async def go():
        url = mqtt_broker.url(prefix)
        async with Subscriber(mqtt_broker, f"{prefix}/#") as sub, MqttSink(url, "dev1", "kws-v1") as sink:
            t = sink.topics
            seqs = [await sink.publish_keyword({**EVENT, "t_start": i, "t_end": i + 0.5}) for i in range(3)]
            raster = np.zeros((8, 20), np.uint8)
            raster[[0, 3, 7], [19, 0, 5]] = 1
            spikes = [encode_spike_raster(800, raster), encode_spike_batch(808, 8, [1], [2], n_units=20)]
            assert sink.publish_spikes("input", spikes[0]) and sink.publish_spikes("hidden", spikes[1])
            sink.publish_metrics({"rtf": np.float32(0.25), "latency_ms": {"p50": 3.0, "p99": float("nan")},
                                  "queues": (1, 2)})
            await sub.wait_for(lambda m: len(sub.on(t.keyword)) == 3 and sub.on(t.metrics)
                               and sub.on(t.spikes("input")) and sub.on(t.spikes("hidden")))
            counters = sink.counters()
        return t, seqs, sub, spikes, counters, sink.session

    t, seqs, sub, spikes, counters, session = run(go())
    assert seqs == [0, 1, 2]
    events = [json.loads(p) for p in sub.on(t.keyword)]
    assert events == [{**EVENT, "t_start": float(i), "t_end": i + 0.5, "model": "kws-v1", "seq": i,
                       "session": session} for i in range(3)]
    assert all(decode_keyword(p) for p in sub.on(t.keyword))
    assert decode_spike_batch(sub.on(t.spikes("input"))[0]) == decode_spike_batch(spikes[0])
    got = decode_spike_batch(sub.on(t.spikes("input"))[0])
    assert list(zip(got.absolute_steps.tolist(), got.units.tolist())) == [(800, 19), (803, 0), (807, 5)]
    assert sub.on(t.spikes("hidden")) == [spikes[1]]
    metrics = json.loads(sub.on(t.metrics)[0])
    assert metrics["rtf"] == 0.25 and metrics["latency_ms"] == {"p50": 3.0, "p99": None}
    assert metrics["queues"] == [1, 2] and metrics["session"] == session
    assert metrics["mqtt"]["connected"] == 1
    assert counters["published_keywords"] == 3 and counters["published_spike_batches"] == 2
    assert counters["dropped_spike_batches"] == 0 and counters["buffered"] == 0
    assert counters["published"] == 6


def test_status_retained_online_then_offline(mqtt_broker, prefix):
    async def go():
        status = f"{prefix}/dev2/status"
        async with MqttSink(mqtt_broker.url(prefix), "dev2", "m"):
            # A subscriber that arrives later still sees the retained state.
            async with Subscriber(mqtt_broker, status) as sub:
                await sub.wait_for(lambda m: m)
                during = list(sub.messages)
        async with Subscriber(mqtt_broker, status) as sub:
            await sub.wait_for(lambda m: m)
            after = list(sub.messages)
        return status, during, after

    status, during, after = run(go())
    assert during == [(status, b"online", True)]
    assert after == [(status, b"offline", True)]


SINK_SCRIPT = """
import asyncio, sys
from spikewire.mqtt import MqttSink

async def main():
    async with MqttSink(sys.argv[1], sys.argv[2], "m") as sink:
        await sink.wait_connected(5)
        print("connected", flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


def test_last_will_on_crash(mqtt_broker, prefix):
    """SIGKILL a sink in a subprocess: the broker publishes the retained 'offline' will."""

    async def go():
        status = f"{prefix}/dev3/status"
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        async with Subscriber(mqtt_broker, status) as sub:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", SINK_SCRIPT, mqtt_broker.url(prefix), "dev3",
                stdout=asyncio.subprocess.PIPE, env=env, cwd=REPO)
            try:
                async with asyncio.timeout(10):
                    assert await proc.stdout.readline() == b"connected\n"
                await sub.wait_for(lambda m: (status, b"online", False) in m)
            finally:
                proc.kill()
                await proc.wait()
            await sub.wait_for(lambda m: m[-1][1] == b"offline")
            live = list(sub.messages)
        async with Subscriber(mqtt_broker, status) as late:
            await late.wait_for(lambda m: m)
            retained = list(late.messages)
        return status, live, retained

    status, live, retained = run(go())
    assert [p for _, p, _ in live] == [b"online", b"offline"]
    assert retained == [(status, b"offline", True)]


def test_control_commands_and_malformed_payloads(mqtt_broker, prefix):
    state = {"paused": False}

    async def go():
        async with MqttSink(mqtt_broker.url(prefix), "dev4", "m") as sink:
            t = sink.topics
            sink.commands.register("pause", lambda: state.update(paused=True))
            sink.commands.register("resume", lambda: state.update(paused=False))

            @sink.commands.register("snapshot", optional={"path": str})
            async def snapshot(path="snap.npz"):
                return {"path": path}

            async with Subscriber(mqtt_broker, t.control_reply, t.keyword) as sub:
                requests = [
                    b'{"cmd": "pause", "id": 1}',
                    b"\x00garbage",
                    b'"just a string"',
                    b'{"cmd": "explode", "id": "x"}',
                    b'{"cmd": "snapshot", "id": 2, "path": 5}',
                    b'{"cmd": "snapshot", "id": 3, "path": "/tmp/s.npz"}',
                    b'{"cmd": "resume", "id": 4}',
                ]
                for payload in requests:
                    await sub.client.publish(t.control, payload, qos=1)
                await sub.wait_for(lambda m: len(sub.on(t.control_reply)) == len(requests))
                paused_after = state["paused"]
                # Still working: a keyword event goes through after all that.
                await sink.publish_keyword(EVENT)
                await sub.wait_for(lambda m: sub.on(t.keyword))
            return [json.loads(p) for p in sub.on(t.control_reply)], paused_after, sink.counters()

    replies, paused_after, counters = run(go())
    assert replies[0] == {"id": 1, "ok": True}
    assert replies[1]["ok"] is False and "not JSON" in replies[1]["error"] and replies[1]["id"] is None
    assert replies[2]["ok"] is False and "JSON object" in replies[2]["error"]
    assert replies[3] == {"id": "x", "ok": False,
                          "error": "unknown cmd 'explode'; known: pause, resume, snapshot"}
    assert replies[4]["id"] == 2 and "'path' must be str" in replies[4]["error"]
    assert replies[5] == {"id": 3, "ok": True, "result": {"path": "/tmp/s.npz"}}
    assert replies[6] == {"id": 4, "ok": True}
    assert paused_after is False
    assert counters["control_received"] == 7 and counters["control_errors"] == 4


def test_username_password(mqtt_auth_broker, prefix, caplog):
    caplog.set_level(logging.DEBUG)

    async def go():
        async with Subscriber(mqtt_auth_broker, f"{prefix}/dev5/keyword") as sub:
            async with MqttSink(mqtt_auth_broker.url(prefix), "dev5", "m") as sink:
                await sink.publish_keyword(EVENT)
                await sub.wait_for(lambda m: m)
        with pytest.raises(MqttAuthError) as wrong:
            async with MqttSink(mqtt_auth_broker.url(prefix, password="wrong-pw"), "dev5", "m"):
                pass
        with pytest.raises(MqttAuthError) as anonymous:
            async with MqttSink(mqtt_auth_broker.url(prefix, username=None), "dev5", "m"):
                pass
        return sub.messages, str(wrong.value), str(anonymous.value)

    messages, wrong, anonymous = run(go())
    assert json.loads(messages[0][1])["word"] == "seven"
    assert "refused user 'spiker'" in wrong and "password" in wrong and "wrong-pw" not in wrong
    assert "refused anonymous client" in anonymous
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "connect attempt 1" in logged
    for secret in (mqtt_auth_broker.password, "wrong-pw", "s3cret"):
        assert secret not in logged


def test_tls_with_throwaway_ca(mqtt_tls_broker, prefix):
    async def go():
        async with Subscriber(mqtt_tls_broker, f"{prefix}/dev6/keyword") as sub:
            async with MqttSink(mqtt_tls_broker.url(prefix), "dev6", "m") as sink:
                assert sink.url.tls
                await sink.publish_keyword(EVENT)
                await sub.wait_for(lambda m: m)
            # insecure=1 skips verification (tests only): works without the CA
            async with MqttSink(mqtt_tls_broker.url(prefix, ca=False, insecure="1"), "dev6", "m") as sink:
                assert sink.connected
        with pytest.raises(MqttTlsError, match="CERTIFICATE_VERIFY_FAILED"):
            async with MqttSink(mqtt_tls_broker.url(prefix, ca=False), "dev6", "m"):
                pass
        return sub.messages

    messages = run(go())
    assert json.loads(messages[0][1])["seq"] == 0


def test_plain_client_on_tls_port_does_not_hang(mqtt_tls_broker, prefix):
    """A plain MQTT client on a TLS port gets no CONNACK: the sink must time out, keep retrying, close promptly."""

    async def go():
        url = mqtt_tls_broker.url(prefix, scheme="mqtt", ca=False)
        async with MqttSink(url, "dev7", "m", connect_timeout=0.5, backoff=FAST, close_timeout=0.5) as sink:
            assert not sink.connected
            await sink.publish_keyword(EVENT)
            assert sink.publish_spikes("input", GOOD) is False
            counters = sink.counters()
        return counters, sink.counters()

    during, after = run(go(), timeout=10)
    assert during["connect_failures"] >= 1 and during["buffered"] == 1 and during["dropped_spike_batches"] == 1
    assert after["dropped_keywords"] == 1 and after["buffered"] == 0


async def _persistent_collector(broker, topic: str, n: int, subscribed: asyncio.Event) -> list[dict]:
    """Collect n distinct keyword seqs through broker restarts (persistent session, QoS 1)."""
    received: list[dict] = []
    seen: set[int] = set()
    while True:
        try:
            async with aiomqtt.Client(**broker.client_kwargs(), identifier="outage-collector",
                                      clean_session=False) as client:
                await client.subscribe(topic, qos=1)
                subscribed.set()
                async for m in client.messages:
                    doc = json.loads(m.payload)
                    received.append(doc)
                    seen.add(doc["seq"])
                    if len(seen) == n:
                        return received
        except aiomqtt.MqttError:
            await asyncio.sleep(0.05)


def test_broker_outage_keeps_order_and_counts_drops(mqtt_restartable_broker, prefix, caplog):
    """Kill the broker for ~3 s during a stream of events; restart it on the same port.

    Every keyword event arrives, in order, exactly once after dropping redeliveries by
    (session, seq); any redelivered copy is byte-identical. Spike batches offered
    during the outage are dropped and counted.
    """
    caplog.set_level(logging.INFO, logger="spikewire.mqtt")
    broker = mqtt_restartable_broker
    n_before, n_during, n_after = 20, 30, 20
    total = n_before + n_during + n_after

    async def go():
        subscribed = asyncio.Event()
        collector = asyncio.create_task(
            _persistent_collector(broker, f"{prefix}/dev8/keyword", total, subscribed))
        async with asyncio.timeout(5):
            await subscribed.wait()
        async with MqttSink(broker.url(prefix), "dev8", "m", backoff=FAST) as sink:
            offered = 0

            async def emit(i):
                nonlocal offered
                await sink.publish_keyword({**EVENT, "t_start": i / 10, "t_end": i / 10 + 0.05})
                sink.publish_spikes("input", encode_spike_batch(i * 10, 10, [i % 10], [0], n_units=1))
                offered += 1
                await asyncio.sleep(0.02)

            for i in range(n_before):
                await emit(i)
            await asyncio.to_thread(broker.stop)
            for i in range(n_before, n_before + n_during):
                await emit(i)
                await asyncio.sleep(0.08)  # ~3 s outage in all
            mid = sink.counters()
            await asyncio.to_thread(broker.start)
            await sink.wait_connected(10)
            for i in range(n_before + n_during, total):
                await emit(i)
            async with asyncio.timeout(20):
                received = await collector
        # After close nothing is in flight: every batch is either published or dropped.
        return received, mid, sink.counters(), offered, sink.session

    received, mid, end, offered, session = run(go(), timeout=40)

    first: dict[int, dict] = {}
    order = []
    for doc in received:
        if doc["seq"] in first:
            assert doc == first[doc["seq"]], "a redelivered copy must be identical"
            continue
        first[doc["seq"]] = doc
        order.append(doc["seq"])
    assert order == list(range(total))
    assert all(first[i]["t_start"] == i / 10 and first[i]["session"] == session for i in range(total))

    assert mid["connected"] == 0 and mid["buffered"] > 0
    assert end["reconnects"] >= 1 and end["connect_failures"] >= 1
    assert end["dropped_keywords"] == 0 and end["buffered"] == 0
    assert end["published_keywords"] == total  # counted once, on the broker's acknowledgement
    assert end["dropped_spike_batches"] >= n_during
    assert end["published_spike_batches"] + end["dropped_spike_batches"] == offered
    logged = [r.getMessage() for r in caplog.records]
    assert any("connection to" in m and "lost" in m for m in logged)
    assert any(re.search(r"connect attempt \d+ to .* failed", m) for m in logged)


def test_keyword_buffer_overflow_drops_oldest(mqtt_restartable_broker, prefix):
    """Broker down at start: the sink still starts, buffers, drops oldest beyond the cap, delivers the rest."""
    broker = mqtt_restartable_broker

    async def go():
        subscribed = asyncio.Event()
        collector = asyncio.create_task(_persistent_collector(broker, f"{prefix}/dev9/keyword", 5, subscribed))
        async with asyncio.timeout(5):
            await subscribed.wait()
        await asyncio.to_thread(broker.stop)
        async with MqttSink(broker.url(prefix), "dev9", "m", keyword_buffer=5, backoff=FAST,
                            connect_timeout=1) as sink:
            for i in range(8):
                await sink.publish_keyword(EVENT)
            mid = sink.counters()
            await asyncio.to_thread(broker.start)
            async with asyncio.timeout(15):
                received = await collector
        return received, mid

    received, mid = run(go(), timeout=30)
    assert mid["dropped_keywords"] == 3 and mid["buffered"] == 5
    seqs = []
    for doc in received:
        if doc["seq"] not in seqs:
            seqs.append(doc["seq"])
    assert seqs == [3, 4, 5, 6, 7]


def test_repeated_spikes_round_trip_as_counts():
    # an input channel may fire several times in one step: the count must survive
    data = encode_spike_batch(100, 4, steps=[2, 0, 2, 2], units=[1, 0, 1, 0], n_units=2)
    b = decode_spike_batch(data)
    assert b.steps.tolist() == [0, 2, 2, 2] and b.units.tolist() == [0, 0, 1, 1]
    assert b.to_raster().tolist() == [[1, 0], [0, 0], [1, 2], [0, 0]]
