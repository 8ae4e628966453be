"""Hostile traffic against the real runtime parts and a real mosquitto (issue #12).

Every network wait is bounded by ``asyncio.timeout``; nothing asserts on timing.
"""
from __future__ import annotations

import asyncio
import json
import uuid

import pytest

aiomqtt = pytest.importorskip("aiomqtt")

from spikewire.mqtt import MqttSink  # noqa: E402


def run(coro, timeout: float = 30.0):
    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro
    return asyncio.run(bounded())


class Listener:
    """A test-side client that publishes and records what arrives on some topics."""

    def __init__(self, broker, *topics: str):
        self.client = aiomqtt.Client(**broker.client_kwargs())
        self.topics = topics
        self.got: list[tuple[str, bytes]] = []
        self._new = asyncio.Event()

    async def __aenter__(self):
        await self.client.__aenter__()
        for t in self.topics:
            await self.client.subscribe(t, qos=1)
        self._task = asyncio.create_task(self._collect())
        return self

    async def __aexit__(self, *exc):
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.client.__aexit__(None, None, None)

    async def _collect(self):
        async for m in self.client.messages:
            self.got.append((str(m.topic), bytes(m.payload)))
            self._new.set()

    async def wait_for(self, predicate, timeout: float = 10.0):
        async with asyncio.timeout(timeout):
            while not predicate():
                self._new.clear()
                await self._new.wait()

    def on(self, topic: str) -> list[bytes]:
        return [p for t, p in self.got if t == topic]


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
            async with Listener(mqtt_broker, t.control_reply) as lis:
                for p in bad:
                    await lis.client.publish(t.control, p, qos=1)
                await lis.client.publish(t.control, b'{"cmd": "pause", "id": 10}', qos=1)
                await lis.wait_for(lambda: len(lis.on(t.control_reply)) == len(bad) + 1)
            return [json.loads(p) for p in lis.on(t.control_reply)], sink.counters()

    replies, counters = run(go())
    assert [r["ok"] for r in replies] == [False] * 4 + [True]
    assert "more than 65536" in replies[0]["error"] and replies[0]["id"] is None
    assert "deeper than 32" in replies[1]["error"]
    assert "NaN" in replies[2]["error"]
    assert "more than 65536" in replies[3]["error"]
    assert replies[4] == {"id": 10, "ok": True} and state["paused"] == 1
    assert all(len(json.dumps(r)) < 300 for r in replies)  # no payload echoed back
    assert counters["control_received"] == 5 and counters["control_errors"] == 4
    assert counters["reconnects"] == 0  # the session was never dropped
