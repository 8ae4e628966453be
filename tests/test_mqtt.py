"""Tests for runtime/mqtt.py: backoff and MqttSink against a real mosquitto (codecs: test_wire.py).

Broker tests use the fixtures in conftest.py (loopback only) and are skipped when
mosquitto is missing. Every network wait is bounded by ``asyncio.timeout``; no
assertion depends on timing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import sys
import uuid

import numpy as np
import pytest

from conftest import REPO, Subscriber, run_bounded
from spikewire.mqtt import (
    Backoff,
    MqttAuthError,
    MqttSink,
    MqttTlsError,
    decode_keyword,
    decode_spike_batch,
    encode_spike_batch,
    encode_spike_raster,
    parse_mqtt_url,
    tls_context,
)

try:
    import aiomqtt  # only the broker tests use it; their fixtures skip without it
except ImportError:
    aiomqtt = None

GOOD = encode_spike_batch(1000, 10, [0, 3, 3], [5, 1, 7], n_units=16, population=1)
FAST = Backoff(initial=0.05, maximum=0.5)


@pytest.fixture
def prefix() -> str:
    return f"swtest/{uuid.uuid4().hex[:8]}"


EVENT = {"word": "seven", "score": 0.875, "t_start": 1.25, "t_end": 1.75}


def test_tls_context_names_a_missing_ca_file(tmp_path):
    url = parse_mqtt_url("mqtts://h/x?cafile=/nope.pem", ca_file=str(tmp_path / "missing.pem"))
    assert url.ca_file.endswith("missing.pem")
    with pytest.raises(MqttTlsError, match="cannot load CA file .*missing.pem"):
        tls_context(url)
    with pytest.raises(MqttTlsError, match="cannot load CA file .*missing.pem"):
        url.ssl_context()  # the old method, kept


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

    t, seqs, sub, spikes, counters, session = run_bounded(go())
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

    status, during, after = run_bounded(go())
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
        async with Subscriber(mqtt_broker, status) as sub:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-P", "-c", SINK_SCRIPT, mqtt_broker.url(prefix), "dev3",
                stdout=asyncio.subprocess.PIPE, cwd=REPO)
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

    status, live, retained = run_bounded(go())
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

    replies, paused_after, counters = run_bounded(go())
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

    messages, wrong, anonymous = run_bounded(go())
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

    messages = run_bounded(go())
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

    during, after = run_bounded(go(), timeout=10)
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

    received, mid, end, offered, session = run_bounded(go(), timeout=40)

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

    received, mid = run_bounded(go(), timeout=30)
    assert mid["dropped_keywords"] == 3 and mid["buffered"] == 5
    seqs = []
    for doc in received:
        if doc["seq"] not in seqs:
            seqs.append(doc["seq"])
    assert seqs == [3, 4, 5, 6, 7]


# ---------------------------------------------------------------------------
# The one reconnect loop (fake clients: the policy, not the network)
# ---------------------------------------------------------------------------

class _Refused(Exception):
    def __init__(self, rc: int):
        super().__init__(f"refused rc={rc}")
        self.rc = rc


class _FakeClient:
    """Connect outcomes from a script: an exception to raise on __aenter__, or None to connect."""

    def __init__(self, script: list, log: list):
        self._outcome = script.pop(0)
        self._log = log

    async def __aenter__(self):
        self._log.append("connect")
        if self._outcome is not None:
            raise self._outcome
        return self

    async def __aexit__(self, *exc):
        self._log.append("release")


def _reconnector(script: list, log: list) -> "Reconnector":
    from spikewire.mqtt import Reconnector

    url = parse_mqtt_url("mqtt://u@127.0.0.1:1/lab")
    return Reconnector(url, lambda: _FakeClient(script, log), what="test",
                       backoff=Backoff(initial=0.001, maximum=0.002), rng=random.Random(0))


def test_reconnector_refused_first_attempt_is_fatal():
    log: list = []
    r = _reconnector([_Refused(5)], log)

    async def session(client):  # pragma: no cover - never reached
        raise AssertionError("connected")

    with pytest.raises(MqttAuthError, match="refused user 'u'"):
        run_bounded(r.run(session))
    assert log == ["connect"] and r.counts == {"connect_failures": 1, "reconnects": 0, "suppressed_warnings": 0}


def test_reconnector_retries_transient_and_later_refusals_then_reconnects():
    """Only the first attempt's refusal is fatal; lost sessions reconnect; counters count."""
    log: list = []
    script = [OSError("connection refused"), _Refused(5), None, None]
    r = _reconnector(script, log)
    sessions = []

    async def session(client):
        sessions.append(client)
        if len(sessions) == 1:
            raise ConnectionError("lost")
        return True  # finished

    first = None

    async def go():
        nonlocal first
        first = asyncio.get_running_loop().create_future()
        await r.run(session, first=first)

    run_bounded(go())
    assert isinstance(first.result(), OSError)  # the first attempt's outcome, reported once
    assert log == ["connect", "connect", "connect", "release", "connect", "release"]
    assert len(sessions) == 2 and script == []
    assert {k: r.counts[k] for k in ("connect_failures", "reconnects")} == {"connect_failures": 2, "reconnects": 1}


def test_reconnector_wait_can_stop_the_loop():
    log: list = []
    r = _reconnector([OSError("down"), OSError("down")], log)
    delays = []

    async def wait(delay):
        delays.append(delay)
        return True  # closing: stop retrying

    async def session(client):  # pragma: no cover - never reached
        raise AssertionError("connected")

    run_bounded(r.run(session, wait=wait))
    assert log == ["connect"] and len(delays) == 1 and 0.0005 <= delays[0] <= 0.001


def test_spike_source_refused_password_is_fatal(mqtt_auth_broker, tiny_model_path):
    """The mqtt: source used to retry a refused password for ever; now the pipeline fails with MqttAuthError."""
    from spikewire.mqtt import MqttSpikeSource
    from spikewire.pipeline import Pipeline

    src = MqttSpikeSource("swsrc/in", mqtt_auth_broker.url("swsrc", password="wrong"))
    with pytest.raises(MqttAuthError, match="refused user"):
        run_bounded(Pipeline(str(tiny_model_path), src, [], metrics_interval=0).run())
    assert src.counters["connect_failures"] == 1 and src.counters["batches"] == 0


def test_spike_source_unreadable_ca_is_a_source_error(tmp_path):
    from spikewire.mqtt import MqttSpikeSource
    from spikewire.sources import SourceError

    with pytest.raises(SourceError, match="cannot load CA file .*nope.pem"):
        MqttSpikeSource("x/in", f"mqtts://127.0.0.1/x?cafile={tmp_path / 'nope.pem'}")
