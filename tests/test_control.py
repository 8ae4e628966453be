"""Tests for runtime/control.py: the control protocol (parse, reply, command registry), no broker.

The same protocol over a real mosquitto is tested in tests/test_mqtt.py
(test_control_commands_and_malformed_payloads).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from conftest import run_bounded
from spikewire.control import CommandError, CommandRegistry, ControlPayloadError, encode_reply, parse_control
from spikewire.wire import PayloadError


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

    r = run_bounded(go())
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


def _channel(queue: int = 2, timeout: float | None = 5.0):
    from spikewire.control import ControlChannel

    reg = CommandRegistry()
    order: list = []
    gate = asyncio.Event()

    @reg.register("slow", required={"n": int})
    async def slow(n):
        order.append(("start", n))
        await gate.wait()
        return n

    @reg.register("hang")
    async def hang():
        await asyncio.Event().wait()

    replies: list = []
    chan = ControlChannel(reg, lambda b: replies.append(json.loads(b)), name="test", queue=queue, timeout=timeout)
    return chan, replies, order, gate


def test_control_channel_answers_bad_requests_at_once_and_counts(caplog):
    caplog.set_level("DEBUG", logger="spikewire.control")
    chan, replies, _, _ = _channel()
    chan._warnings.interval = 3600.0  # one warning per hour: the count below does not depend on speed
    chan.submit(b"{")  # no loop needed: bad requests never reach the queue
    chan.submit(b'{"id": 7, "cmd": "nope"}')
    chan.submit(b'{"id": 8, "cmd": "slow", "n": "x"}')
    chan.submit(b'{"id": 9, "cmd": "slow"}')
    assert [r["id"] for r in replies] == [None, 7, 8, 9] and not any(r["ok"] for r in replies)
    assert "not JSON" in replies[0]["error"] and "unknown cmd 'nope'" in replies[1]["error"]
    assert "must be int" in replies[2]["error"] and "missing argument(s) n" in replies[3]["error"]
    suppressed = chan.counts.pop("suppressed_warnings")
    assert chan.counts == {"control_received": 4, "control_errors": 4, "dropped_commands": 0}
    assert chan.pending == 0
    # a flood of bad requests is one warning a second: every error is in the log, most only at debug level
    levels = [r.levelname for r in caplog.records if r.name == "spikewire.control"]
    assert len(levels) == 4 and levels[0] == "WARNING" and levels.count("DEBUG") == suppressed == 3


def test_control_channel_runs_in_order_one_at_a_time_and_refuses_when_full():
    chan, replies, order, gate = _channel(queue=2)

    async def go():
        worker = asyncio.create_task(chan.run())
        for n in range(2):
            chan.submit(json.dumps({"id": n, "cmd": "slow", "n": n}))
        while not order:  # the worker took command 0 and is inside it
            await asyncio.sleep(0)
        chan.submit(json.dumps({"id": 2, "cmd": "slow", "n": 2}))  # queued behind 1 (0 is running)
        chan.submit(json.dumps({"id": 3, "cmd": "slow", "n": 3}))  # queue of 2 is full: busy
        assert order == [("start", 0)]  # one at a time: 1 has not started while 0 runs
        gate.set()
        while len(replies) < 4:
            await asyncio.sleep(0)
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)

    run_bounded(go())
    assert replies[0] == {"id": 3, "ok": False, "error": "busy: 2 commands pending"}
    assert [(r["id"], r["ok"], r.get("result")) for r in replies[1:]] == [(0, True, 0), (1, True, 1), (2, True, 2)]
    assert order == [("start", 0), ("start", 1), ("start", 2)]
    assert chan.counts == {"control_received": 4, "control_errors": 0, "dropped_commands": 1, "suppressed_warnings": 0}


def test_control_channel_times_out_a_hanging_command():
    chan, replies, _, _ = _channel(timeout=0.05)

    async def go():
        worker = asyncio.create_task(chan.run())
        chan.submit(b'{"id": "h", "cmd": "hang"}')
        while not replies:
            await asyncio.sleep(0.01)
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)

    run_bounded(go())
    assert replies == [{"id": "h", "ok": False, "error": "hang: timed out after 0.05 s"}]


def test_pipeline_control_channel_is_a_door_into_its_commands(tiny_model_path):
    """A second door (not MQTT) on a running pipeline: pause/status/resume go through the same registry."""
    from conftest import DIGITS_WAV

    from spikewire.pipeline import Pipeline
    from spikewire.sources import WavSource

    pipe = Pipeline(str(tiny_model_path), WavSource(DIGITS_WAV, fast=False, speed=4.0), [], metrics_interval=0)
    replies: list = []
    chan = pipe.control_channel(lambda b: replies.append(json.loads(b)), name="pipe-test")
    assert chan.registry is pipe.commands

    async def go():
        task = asyncio.create_task(pipe.run())
        worker = asyncio.create_task(chan.run())
        while not pipe._running:
            await asyncio.sleep(0.01)
        for i, cmd in enumerate(("pause", "status", "resume")):
            chan.submit(json.dumps({"id": i, "cmd": cmd}))
        while len(replies) < 3:
            await asyncio.sleep(0.01)
        pipe.request_stop()
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        return await task

    run_bounded(go(), timeout=60)
    assert [r["id"] for r in replies] == [0, 1, 2] and all(r["ok"] for r in replies), replies
    assert replies[0]["result"]["paused"] is True and replies[2]["result"]["paused"] is False
    assert replies[1]["result"]["paused"] is True  # status ran after pause, in order


def test_command_lines_of_a_local_user():
    from spikewire.control import parse_command_line as p

    assert p("  ") is None and p("# a comment") is None
    assert p("learn on", 1) == {"cmd": "learn", "id": 1, "on": True}
    assert p("learn off rule=superspike rate_out=4 matrices=in,out") == {
        "cmd": "learn", "id": None, "on": False, "rule": "superspike", "rate_out": 4, "matrices": ["in", "out"]}
    assert p("label seven") == {"cmd": "label", "id": None, "word": "seven"}
    assert p("label seven 12") == {"cmd": "label", "id": None, "word": "seven", "stretch": 12}
    assert p("reward +1") == {"cmd": "reward", "id": None, "value": 1}
    assert p("reward -1 3") == {"cmd": "reward", "id": None, "value": -1, "stretch": 3}
    assert p("save") == {"cmd": "save", "id": None} and p("stretches")["cmd"] == "stretches"
    assert p("reload models/x.swm discard=true") == {"cmd": "reload", "id": None, "path": "models/x.swm",
                                                    "discard": True}
    assert p('{"cmd": "label", "word": "two", "stretch": 4}', 9) == {"cmd": "label", "word": "two", "stretch": 4,
                                                                    "id": 9}
    for line, msg in (("label seven twelve", "stretch id must be an integer"), ("label seven -2", ">= 0"),
                      ("label a 1 2", "usage: label"), ("reward 2", "usage: reward"), ("learn maybe", "usage: learn"),
                      ("pause now", "unexpected"), ("label x id=3", "bad or repeated"), ("{nope", "not JSON"),
                      ("label " + "x" * 5000, "longer than")):
        with pytest.raises(ControlPayloadError, match=msg):
            p(line, 5)
    # a typed command goes through the registry like an MQTT payload: its validation answers
    r = CommandRegistry()
    r.register("label", lambda word, stretch=None: {"word": word, "stretch": stretch}, required={"word": str},
               optional={"stretch": int})
    ok = json.loads(run_bounded(r.handle(json.dumps(p("label seven 3", 1)))))
    assert ok == {"id": 1, "ok": True, "result": {"word": "seven", "stretch": 3}}
    bad = json.loads(run_bounded(r.handle(json.dumps(p("label", 2)))))
    assert not bad["ok"] and "missing argument(s) word" in bad["error"]
