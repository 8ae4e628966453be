"""Tests for runtime/control.py: the control protocol (parse, reply, command registry), no broker.

The same protocol over a real mosquitto is tested in tests/test_mqtt.py
(test_control_commands_and_malformed_payloads).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from spikewire.control import CommandError, CommandRegistry, ControlPayloadError, encode_reply, parse_control
from spikewire.wire import PayloadError


def run(coro, timeout: float = 20.0):
    """Run a coroutine in a fresh loop with an overall deadline (a hang fails, it never blocks the suite)."""

    async def bounded():
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


def test_command_registry_replies():
    reg = CommandRegistry()
    calls = []
    reg.register("pause", lambda: calls.append("pause"))

    @reg.register("label", required={"word": str}, optional={"weight": float})
    async def label(word, weight=1.0):
        if word == "bad":
            raise CommandError("no such word")
        return {"word": word, "weight": weight}

    @reg.register("crash")
    def crash():
        raise RuntimeError("boom")

    @reg.register("slow")
    async def slow():
        await asyncio.sleep(10)

    async def go():
        async def reply(payload, timeout=None):
            return json.loads(await reg.handle(payload, timeout=timeout))

        return [
            await reply(b'{"cmd": "pause", "id": 1}'),
            await reply(b'{"cmd": "label", "id": "a", "word": "yes", "weight": 2}'),
            await reply(b"not json"),
            await reply(b"[1, 2]"),
            await reply(b'{"id": 5}'),
            await reply(b'{"cmd": "fly", "id": 6}'),
            await reply(b'{"cmd": "label", "id": 7}'),
            await reply(b'{"cmd": "label", "id": 8, "word": 3}'),
            await reply(b'{"cmd": "label", "id": 9, "word": "x", "colour": "red"}'),
            await reply(b'{"cmd": "label", "id": 10, "word": "bad"}'),
            await reply(b'{"cmd": "crash", "id": 11}'),
            await reply(b'{"cmd": "slow", "id": 12}', timeout=0.05),
            await reply(b'{"cmd": "pause", "id": {"x": 1}}'),
            await reply(b'{"cmd": "label", "id": 13, "word": "x", "weight": true}'),
        ]

    r = run(go())
    assert calls == ["pause"]
    assert r[0] == {"id": 1, "ok": True}
    assert r[1] == {"id": "a", "ok": True, "result": {"word": "yes", "weight": 2}}
    expected_errors = [
        (None, "not JSON"), (None, "must be a JSON object"), (5, "no 'cmd'"),
        (6, "unknown cmd 'fly'; known: crash, label, pause, slow"), (7, "missing argument"),
        (8, "'word' must be str, got int"), (9, "unexpected argument 'colour'"), (10, "no such word"),
        (11, "RuntimeError: boom"), (12, "timed out"), (None, "id must be"), (13, "'weight' must be float, got bool"),
    ]
    for got, (req_id, text) in zip(r[2:], expected_errors, strict=True):
        assert got["ok"] is False and got["id"] == req_id and text in got["error"], got
    with pytest.raises(ValueError, match="already registered"):
        reg.register("pause", print)
    assert parse_control('{"cmd": "x", "id": null, "a": 1}').args == {"a": 1}


def test_parse_errors_are_payload_errors_with_the_id():
    with pytest.raises(ControlPayloadError, match="no 'cmd'") as info:
        parse_control(b'{"id": 7}')
    assert info.value.request_id == 7 and isinstance(info.value, PayloadError)
    assert json.loads(encode_reply(3, False, error="x")) == {"id": 3, "ok": False, "error": "x"}


def test_mqtt_and_pipeline_use_the_same_protocol_objects():
    """runtime/mqtt.py re-exports the control names (old imports keep working); the pipeline's
    registry is the control module's class."""
    import spikewire.control as control
    import spikewire.mqtt as mqtt
    import spikewire.pipeline as pipeline

    for name in ("CommandError", "CommandRegistry", "CommandSpec", "ControlCommand", "ControlPayloadError",
                 "encode_reply", "parse_control"):
        assert getattr(mqtt, name) is getattr(control, name), name
    assert pipeline.CommandRegistry is control.CommandRegistry
    assert mqtt.PayloadError is PayloadError


def test_decode_json_object_is_the_one_network_parse_point():
    import pytest

    from spikewire.control import ControlPayloadError
    from spikewire.wire import PayloadError, decode_json_object

    assert decode_json_object(b'{"a": 1}', "x payload") == {"a": 1}
    with pytest.raises(PayloadError, match="x payload is not JSON"):
        decode_json_object(b"{", "x payload")
    with pytest.raises(ControlPayloadError, match="must be a JSON object, got list"):
        decode_json_object(b"[1]", "x payload", ControlPayloadError)
