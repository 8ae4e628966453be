"""Hostile traffic against the real runtime parts and a real mosquitto (issue #12).

Every network wait is bounded by ``asyncio.timeout``; nothing asserts on timing.
"""
from __future__ import annotations

import asyncio
import json
import uuid

import pytest

aiomqtt = pytest.importorskip("aiomqtt")

from conftest import SHIPPED_DEMO_WORDS, Subscriber, run_bounded  # noqa: E402

from spikewire.mqtt import MqttSink  # noqa: E402


def test_deep_or_huge_control_json_is_answered_and_counted(mqtt_broker):
    """Deeply nested JSON on `control` used to raise RecursionError in the MQTT loop and drop the session
    (no reply, not counted). Now each bad payload gets an error reply and a count, and the session stays."""
    prefix = f"swtest/{uuid.uuid4().hex[:8]}"
    state = {"paused": 0}
    bad = [b"[" * 200_000,                                     # > 64 KiB
           b'{"id": 7, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",   # deep (10 KB)
           b'{"id": 8, "cmd": "pause", "x": NaN}',
           json.dumps({"id": 9, "cmd": "pause", "pad": "y" * 70_000}).encode()]

    async def go():
        async with MqttSink(mqtt_broker.url(prefix), "dev", "m") as sink:
            t = sink.topics
            sink.commands.register("pause", lambda: state.update(paused=state["paused"] + 1))
            async with Subscriber(mqtt_broker, t.control_reply) as lis:
                for p in bad:
                    await lis.client.publish(t.control, p, qos=1)
                await lis.client.publish(t.control, b'{"cmd": "pause", "id": 10}', qos=1)
                await lis.wait_for(lambda m: len(lis.on(t.control_reply)) == len(bad) + 1, timeout=10)
            return [json.loads(p) for p in lis.on(t.control_reply)], sink.counters()

    replies, counters = run_bounded(go(), timeout=30)
    assert [r["ok"] for r in replies] == [False] * 4 + [True]
    assert "more than 65536" in replies[0]["error"] and replies[0]["id"] is None
    assert "deeper than 32" in replies[1]["error"]
    assert "NaN" in replies[2]["error"]
    assert "more than 65536" in replies[3]["error"]
    assert replies[4] == {"id": 10, "ok": True} and state["paused"] == 1
    assert all(len(json.dumps(r)) < 300 for r in replies)  # no payload echoed back
    assert counters["control_received"] == 5 and counters["control_errors"] == 4
    assert counters["reconnects"] == 0  # the session was never dropped


# --- spike batches on the mqtt: source (items 1 and 4) -------------------------------

import struct  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from spikewire.mqtt import MqttSpikeSource  # noqa: E402
from spikewire.wire import SPIKE_HEADER, SPIKE_MAGIC, BatchLimits, SpikeTimeline, encode_spike_batch  # noqa: E402


def header(n_units=64, n_steps=10, t0=0, n_records=0, flags=0):
    return SPIKE_HEADER.pack(SPIKE_MAGIC, 1, flags, 0, n_units, n_steps, t0, n_records)


def source(**kw):
    return MqttSpikeSource("t/in", "mqtt://127.0.0.1:1/x", n_in=16, **kw)  # never connects here


def fed(src, payload):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        blk = src.handle_payload(payload)
        return blk, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("payload, why", [
    (header(n_steps=2**32 - 1), "n_steps 4294967295 exceeds"),  # 28 bytes that ended the process (#12)
    (header(n_steps=1_000_000), "n_steps 1000000 exceeds"),    # accepted before: stream time jumped an hour
    (header(n_units=2**32 - 1), "n_units 4294967295 exceeds"),
    (header(t0=2**60), "beyond this receiver's 9007199254740992"),
    (header(n_records=2**21, flags=1) + bytes(8 * 2**21), "2097152 records exceed"),
])
def test_batches_beyond_the_bounds_are_malformed_before_allocating(payload, why, caplog):
    src = source()
    blk, peak = fed(src, payload)
    assert blk is None and src.counters["malformed"] == 1 and src.counters["steps"] == 0
    assert peak < 2 * len(payload) + 65536, f"{peak} bytes for a {len(payload)}-byte batch"
    assert why in caplog.text


def test_timeline_rule():
    tl = SpikeTimeline(max_gap_steps=100, resync_after=3)
    seq = [(0, 10), (10, 10), (25, 10), (500, 10), (510, 10), (505, 10), (0, 10), (10, 10),
           (15, 5), (15, 5), (15, 5), (20, 5)]
    got = [tuple(tl.place(t0, n)) for t0, n in seq]
    assert got == [
        (True, 0, None),      # first
        (True, 0, None),      # next
        (True, 5, None),      # a gap of 5 is filled
        (True, 0, "jump"),    # 465 > 100 ahead: resync
        (True, 0, None),
        (False, 0, None),     # late (duplicate/overlap): dropped
        (True, 0, "back"),    # 520 behind: the producer restarted
        (True, 0, None),
        (False, 0, None), (False, 0, None),  # two late in a row: dropped
        (True, 0, "late"),    # the third in a row: resync (a restart less than max_gap_steps ago)
        (True, 0, None),
    ]
    with pytest.raises(ValueError):
        SpikeTimeline(resync_after=0)


def test_a_producer_restart_or_a_bogus_t0_never_stalls_the_source():
    src = source(max_gap_steps=1000)
    ok = lambda t0: encode_spike_batch(t0, 10, [0, 9], [1, 2], n_units=16)  # noqa: E731
    for t0 in range(0, 100, 10):
        assert src.handle_payload(ok(t0)) is not None
    # one batch with a huge t0 (within the bounds), then the producer goes on as before
    assert src.handle_payload(ok(2**50)) is not None
    assert all(src.handle_payload(ok(t0)) is not None for t0 in range(100, 200, 10))
    assert src.counters["resyncs"] == 2 and src.counters["late"] == 0
    # the producer restarts at t0 = 0 (it had sent 200 steps: less than max_gap_steps behind)
    blocks = [src.handle_payload(ok(t0)) for t0 in range(0, 200, 10)]
    assert [b is None for b in blocks[:7]] == [True] * 7 and all(b is not None for b in blocks[7:])
    assert src.counters["late"] == 7 and src.counters["resyncs"] == 3  # resync_after = 8
    assert src.counters["batches"] == 10 + 1 + 10 + 13 and src.counters["steps"] == 34 * 10


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.sampled_from(["ok", "late", "jump", "back", "bad", "huge"]),
                          st.integers(1, 50)), max_size=60))
def test_any_sequence_keeps_the_source_bounded_and_following(events):
    """Whatever arrives, every block is bounded (at most max_gap_steps + max_steps steps), every payload
    is counted exactly once, and a producer that then sends in order is always followed again."""
    src = source(max_gap_steps=200, limits=BatchLimits(max_steps=64))
    t = 0
    n = 0
    for kind, k in events:
        t0 = {"ok": t, "late": max(t - k, 0), "jump": t + 1000 * k, "back": max(t - 5000, 0),
              "bad": t, "huge": 2**52 + k}[kind]
        payload = encode_spike_batch(t0, k, [0], [k % 16], n_units=16) if kind != "bad" else \
            header(n_steps=2**31) + b""
        blk = src.handle_payload(payload)
        n += 1
        if blk is not None:
            assert blk.events.n_steps <= 200 + 64
        if kind == "ok":
            t += k
    c = src.counters
    assert c["batches"] + c["late"] + c["malformed"] + c["bad_units"] == n
    # a producer sending in order from a fresh t0 is followed within resync_after batches
    start = 10**9
    got = [src.handle_payload(encode_spike_batch(start + 10 * i, 10, [], [], n_units=16)) for i in range(20)]
    assert all(b is not None for b in got[8:])


def test_hostile_batches_through_a_real_broker_leave_the_pipeline_running(tiny_model_path, mqtt_broker):
    from spikewire.pipeline import Pipeline
    from spikewire.sinks import StdoutSink
    import io

    topic = f"swtest/{uuid.uuid4().hex[:8]}/in"
    good = [encode_spike_batch(100 * i, 100, np.arange(100), np.arange(100) % 16, n_units=16) for i in range(5)]

    async def go():
        src = MqttSpikeSource(topic, mqtt_broker.url("x"))
        pipe = Pipeline(str(tiny_model_path), src, [StdoutSink(io.StringIO())], metrics_interval=0)
        task = asyncio.create_task(pipe.run())
        async with asyncio.timeout(10):
            while src.subscribed is None or not src.subscribed.is_set():
                await asyncio.sleep(0.01)
        async with aiomqtt.Client(**mqtt_broker.client_kwargs()) as c:
            await c.publish(topic, good[0], qos=1)
            await c.publish(topic, header(n_units=64, n_steps=2**32 - 1), qos=1)   # the 28-byte killer
            await c.publish(topic, good[1], qos=1)
            await c.publish(topic, encode_spike_batch(2**40, 5, [0], [1], n_units=16), qos=1)  # bogus t0
            for g in good[2:]:
                await c.publish(topic, g, qos=1)
        async with asyncio.timeout(10):
            while src.counters["batches"] + src.counters["malformed"] < 6:
                await asyncio.sleep(0.01)
        pipe.request_stop()
        return await task, src.counters

    final, counters = run_bounded(go(), timeout=30)
    assert counters["malformed"] == 1 and counters["batches"] == 6 and counters["resyncs"] == 2
    assert counters["late"] == 0 and counters["steps"] == 5 * 100 + 5
    assert final["steps"] == 505  # every good batch reached the core; stream time did not jump


# ---------------------------------------------------------------------------
# A broker that never comes up (item 6): the closing flush backs off, the log is rate-limited,
# and the final metrics count what the close dropped.


def test_broker_never_up_backoff_while_closing_and_true_final_counts(caplog):
    """The whole pipeline with an MQTT sink whose broker is never there. Each connect attempt after a
    failure waits at least the delay it announced (read from the log records, debug ones included),
    except one cut short by the close request, also during the closing flush, which used to retry
    without any delay (6,573 attempts in 2 s);
    every failure is either a warning or counted as suppressed; and the final metrics say how many
    keyword events the close dropped, the same number the log says (it used to say 0)."""
    import re

    from conftest import DIGITS_WAV, free_port

    from spikewire.mqtt import Backoff
    from spikewire.pipeline import Pipeline
    from spikewire.sinks import parse_sink
    from spikewire.sources import WavSource

    caplog.set_level("DEBUG", logger="spikewire.mqtt")
    url = f"mqtt://127.0.0.1:{free_port()}/never"  # nothing listens there: every connect is refused at once
    sink = parse_sink(url, device_id="lonely", mqtt_options={
        "connect_timeout": 1.0, "close_timeout": 1.5, "backoff": Backoff(initial=0.05, maximum=0.4, jitter=0.5)})
    pipe = Pipeline("kws-digits", WavSource(DIGITS_WAV, fast=True), [sink], metrics_interval=0)
    final = run_bounded(pipe.run(), timeout=60)

    m = final["sinks"][sink.name]
    assert final["counts"]["keywords"] == len(SHIPPED_DEMO_WORDS)  # what the shipped model hears of the demo
    closed = [int(re.search(r"closed with (\d+) undelivered", r.getMessage()).group(1))
              for r in caplog.records if "undelivered keyword event" in r.getMessage()]
    overflow = [r for r in caplog.records if "keyword buffer full" in r.getMessage()]
    assert closed == [final["counts"]["keywords"]] and not overflow
    assert m["dropped_keywords"] == closed[0] == final["counts"]["keywords"] and m["published_keywords"] == 0

    failures = [r for r in caplog.records if "MQTT connect attempt" in r.getMessage() and "failed" in r.getMessage()]
    assert len(failures) == m["connect_failures"] >= 3
    warned = [r for r in failures if r.levelname == "WARNING"]
    assert len(warned) + m["suppressed_warnings"] == len(failures)
    attempts = [r for r in caplog.records if re.search(r"MQTT connect attempt \d+ to .* ?$", r.getMessage())
                and "failed" not in r.getMessage()]
    assert len(failures) <= len(attempts) <= len(failures) + 1  # + the one the close may cancel midway
    # attempt k+1 starts after the delay failure k announced; the one exception allowed is the wait that
    # the close request cut short (one last flush attempt at once)
    early = [(fail.getMessage(), nxt.created - fail.created) for fail, nxt in zip(failures, attempts[1:])
             if nxt.created - fail.created < 0.95 * fail.args[4]]  # args: what, attempt, url, error, delay[, n]
    assert len(early) <= 1, early


# ---------------------------------------------------------------------------
# Everything at once: a running pipeline with on-line learning on, spikes in and control over a real
# broker, fed hostile batches and hostile control (learning commands included) between good traffic.

HOSTILE_CONTROL = [
    b"\xff\xfe garbage",                                       # not JSON              -> control_errors
    b"[" * 5000 + b"]" * 5000,                                 # too deep              -> control_errors
    b'{"cmd": "status", "pad": "' + b"a" * 70_000 + b'"}',     # too big               -> control_errors
    b'{"cmd": "format_disk", "id": "u"}',                      # unknown command       -> control_errors
    b'{"cmd": "learn", "id": "l1", "rule": 5}',                # wrong type            -> control_errors
    b'{"cmd": "learn", "id": "l2", "passes": "many"}',         # wrong type            -> control_errors
    b'{"cmd": "reward", "id": "r1", "value": true}',           # bool is not an int    -> control_errors
    b'{"cmd": "revert", "id": "v1", "all": true}',             # unexpected argument   -> control_errors
    b'{"cmd": "save", "id": "s1", "path": "/etc/passwd"}',     # unexpected argument   -> control_errors
    # valid requests whose handler refuses them: an error reply, the live config unchanged
    b'{"cmd": "learn", "id": "l3", "rule": "' + b"x" * 60_000 + b'"}',
    b'{"cmd": "learn", "id": "l4", "rate_in": 31}',
    b'{"cmd": "learn", "id": "l5", "matrices": ["in", "in"]}',
    b'{"cmd": "learn", "id": "l6", "passes": 101}',
    b'{"cmd": "learn", "id": "l7", "target_hi": -40000}',
    b'{"cmd": "label", "id": "b1", "word": "seven"}',
    b'{"cmd": "label", "id": "b2", "word": "low", "stretch": 4611686018427387904}',
    b'{"cmd": "reward", "id": "r2", "value": 2}',
    b'{"cmd": "save", "id": "s2"}',                            # no checkpoint file configured
]
N_INVALID = 9  # the first nine: refused before they reach a handler


def test_a_running_learning_pipeline_under_hostile_traffic_keeps_serving(tiny_model_path, mqtt_broker):
    """Good spike batches all reach the core and keep stream time in step, every hostile batch is counted
    malformed, every control request gets exactly one reply (errors short, no payload echoed), the invalid
    ones are counted, the learning configuration is the one set by the valid ``learn``, and the pipeline
    answers ``status`` and ``stretches`` at the end."""
    from spikewire.pipeline import Pipeline
    from spikewire.sinks import parse_sink

    prefix, dev = f"swtest{uuid.uuid4().hex[:6]}", "hostile"
    topic, control = f"{prefix}/in", f"{prefix}/{dev}/control"
    rng = np.random.default_rng(7)
    good = [encode_spike_batch(50 * i, 50, np.sort(rng.integers(0, 50, 60)), rng.integers(0, 16, 60), n_units=16)
            for i in range(12)]
    bad_batches = [header(n_units=16, n_steps=2**32 - 1), b"SWSB\x01", header(n_units=16, n_records=2**30, flags=1),
                   rng.bytes(100), header(n_units=2**32 - 1)]

    async def go():
        src = MqttSpikeSource(topic, mqtt_broker.url(prefix))
        sink = parse_sink(mqtt_broker.url(prefix), device_id=dev)
        pipe = Pipeline(str(tiny_model_path), src, [sink], metrics_interval=0, learn=True)
        task = asyncio.create_task(pipe.run())
        async with Subscriber(mqtt_broker, f"{control}/reply") as lis:
            async with asyncio.timeout(10):
                while (src.subscribed is None or not src.subscribed.is_set()) or sink.sink is None \
                        or not sink.sink.connected:
                    await asyncio.sleep(0.01)
            c = lis.client
            sent = 0
            await c.publish(control, b'{"cmd": "learn", "id": "ok1", "rate_out": 9}', qos=1)
            sent += 1
            for i, g in enumerate(good):
                await c.publish(topic, g, qos=1)
                if i < len(bad_batches):
                    await c.publish(topic, bad_batches[i], qos=1)
                for p in HOSTILE_CONTROL[i::len(good)]:
                    await c.publish(control, p, qos=1)
                    sent += 1
            await lis.wait_for(lambda m: len(lis.on(f"{control}/reply")) >= sent, timeout=20)
            async with asyncio.timeout(10):
                while src.counters["batches"] + src.counters["malformed"] < len(good) + len(bad_batches):
                    await asyncio.sleep(0.01)
            await c.publish(control, b'{"cmd": "status", "id": "end"}', qos=1)
            await c.publish(control, b'{"cmd": "stretches", "id": "st"}', qos=1)
            await lis.wait_for(lambda m: len(lis.on(f"{control}/reply")) >= sent + 2, timeout=20)
            replies = [json.loads(p) for p in lis.on(f"{control}/reply")]
        lc = pipe.learning.lc
        pipe.request_stop()
        final = await task
        return replies, src.counters, final, lc, sent

    replies, counters, final, lc, sent = run_bounded(go(), timeout=60)
    by_id = {r["id"]: r for r in replies}
    assert len(replies) == sent + 2 and by_id["ok1"]["ok"] is True
    assert sum(r["ok"] for r in replies) == 3, replies             # ok1, status, stretches
    assert all(len(json.dumps(r)) < 400 for r in replies if not r["ok"]), [r for r in replies if len(json.dumps(r)) >= 400]
    assert "x" * 100 not in json.dumps(replies[:-2])              # nothing of the payloads comes back
    assert by_id["end"]["result"]["steps"] == 12 * 50 and by_id["st"]["ok"]
    assert lc.rate_out == 9 and lc.rule == "eprop" and lc.rate_in == 16 and lc.learn == ("in", "out")
    assert counters["batches"] == 12 and counters["malformed"] == len(bad_batches) and counters["late"] == 0
    assert counters["steps"] == final["steps"] == 12 * 50
    m = final["sinks"][next(iter(final["sinks"]))]
    assert m["control_received"] == sent + 2 and m["control_errors"] == N_INVALID
    assert m["dropped_replies"] == 0 and m["reconnects"] == 0 and final["learning"]["on"] is True


# ---------------------------------------------------------------------------
# A publisher faster than the pipeline: aiomqtt's queue of received messages is bounded (mqtt.Inbox).
# Unbounded, a flood of 18,000 garbage messages a second grew a running `spikewire run` from 44 to
# 177 MB in 20 s (docs/security.md, "Flood"); bounded, it stayed at 45 MB.

class _Msg:
    def __init__(self, n):
        self.payload = bytes(n)


def test_inbox_drops_the_oldest_beyond_its_messages_and_bytes():
    from spikewire.mqtt import Inbox

    counts: dict = {}
    q = Inbox(3, max_bytes=100, counts=counts)
    for n in (10, 20, 30):
        q.put_nowait(_Msg(n))
    assert q.qsize() == 3 and q.nbytes == 60 and counts["dropped_messages"] == 0
    q.put_nowait(_Msg(5))                    # a fourth message: the oldest (10 bytes) goes
    assert [len(m.payload) for m in q._queue] == [20, 30, 5] and q.nbytes == 55
    q.put_nowait(_Msg(90))                   # 55 + 90 > 100 bytes: the oldest go until it fits (5 + 90)
    assert [len(m.payload) for m in q._queue] == [5, 90] and q.nbytes == 95 and counts["dropped_messages"] == 3
    q.put_nowait(_Msg(101))                  # larger than the whole budget: dropped itself (and the rest)
    assert q.qsize() == 0 and q.nbytes == 0 and counts["dropped_messages"] == 6
    q.put_nowait(_Msg(7))
    assert q.get_nowait().payload == bytes(7) and q.nbytes == 0


def test_both_mqtt_clients_receive_into_a_bounded_inbox():
    from spikewire.mqtt import INBOX_BYTES, INBOX_MESSAGES, Inbox, MqttSink

    async def go():  # aiomqtt clients are made inside a running loop (they are never connected here)
        src = source()
        sink = MqttSink("mqtt://127.0.0.1:1/p", "d", "m")
        for client, counts, cap in ((src._make_client(), src.counters, INBOX_MESSAGES["spikes"]),
                                    (sink._make_client(), sink._counts, INBOX_MESSAGES["control"])):
            q = client._queue
            assert isinstance(q, Inbox) and q.maxsize == cap and q.max_bytes == INBOX_BYTES and q._counts is counts
            for _ in range(cap + 5):
                q.put_nowait(_Msg(1))
            assert q.qsize() == cap and counts["dropped_messages"] == 5
        assert sink.counters()["dropped_messages"] == 5

    run_bounded(go())
