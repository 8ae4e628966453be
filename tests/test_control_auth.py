"""Control authorisation on the device (issue #12 item 2): ``[control]`` enabled / allow / models_dir.

Control requests come from whoever can publish to the broker's ``control`` topic, so ``reload``
never takes a path as it is: only shipped model names, or ``.swm`` files inside ``models_dir``
(symlinks resolved, no ``..``); a refused file is named without any of its bytes. Commands
outside ``allow`` are refused and counted; ``enabled = false`` does not subscribe at all.
Retained control messages are ignored (real mosquitto). docs/security.md.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from conftest import DIGITS_WAV, REPO, make_tiny_model
from spikewire.control import CommandError, CommandRegistry, ControlPolicy
from spikewire.model import shipped_models
from spikewire.pipeline import Pipeline
from spikewire.sources import WavSource

SECRET = b"root:x:0:0:hunter2:/root:/bin/bash\n"


def run(coro, timeout: float = 60.0):
    async def go():
        async with asyncio.timeout(timeout):
            return await coro
    return asyncio.run(go())


@pytest.fixture
def models(tmp_path):
    """models/ (good.swm, secret.swm holding non-model bytes, a symlink out, a subfolder) and outside/."""
    root, outside = tmp_path / "models", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    make_tiny_model("tiny-good").save(root / "good.swm")
    (root / "sub").mkdir()
    make_tiny_model("tiny-sub").save(root / "sub" / "deep.swm")
    (root / "secret.swm").write_bytes(SECRET)
    (root / "notes.txt").write_bytes(b"x")
    make_tiny_model("tiny-outside").save(outside / "evil.swm")
    (outside / "passwd").write_bytes(SECRET)
    os.symlink(outside / "evil.swm", root / "link.swm")
    os.symlink(root / "good.swm", root / "alias.swm")
    return root, outside


def test_policy_accepts_only_swm_files_inside_models_dir(models):
    root, outside = models
    p = ControlPolicy(models_dir=str(root))
    assert p.model_file("good.swm") == (root / "good.swm").resolve()
    assert p.model_file(str(root / "good.swm")) == (root / "good.swm").resolve()
    assert p.model_file("sub/deep.swm") == (root / "sub" / "deep.swm").resolve()
    assert p.model_file("alias.swm") == (root / "good.swm").resolve()  # a symlink that stays inside
    refused = {
        "../outside/evil.swm": "'..' is not allowed",
        "sub/../good.swm": "'..' is not allowed",
        str(outside / "evil.swm"): "outside the models folder",
        str(outside / "passwd"): "outside the models folder",
        "/etc/passwd": "outside the models folder",
        "link.swm": "outside the models folder",  # symlink resolved
        "notes.txt": "not a .swm model file",
        "missing.swm": "no model 'missing.swm'",
        "sub": "not a .swm model file",
        ".": "outside the models folder",
        "a\0b.swm": "bad model path",
    }
    for ref, message in refused.items():
        with pytest.raises(CommandError, match=message):
            p.model_file(ref)
    with pytest.raises(CommandError, match="only shipped model names"):
        ControlPolicy().model_file("good.swm")


@pytest.mark.parametrize("doc, message", [
    ({"allow": "pause"}, "allow must be a list"),
    ({"allow": ["pause", 3]}, "non-empty command names"),
    ({"enabled": "no"}, "enabled must be true or false"),
    ({"models_dir": 5}, "models_dir must be a folder path"),
    ({"allowed": ["pause"]}, "unknown key"),
])
def test_policy_refuses_bad_config(doc, message):
    with pytest.raises(ValueError, match=message):
        ControlPolicy.from_dict(doc)


def test_registry_allow_list_refuses_other_commands():
    reg = CommandRegistry()
    for name in ("pause", "snapshot"):
        reg.register(name, lambda: name)
    reg.allowed = frozenset({"pause"})
    assert reg.names() == ["pause"]
    replies = [json.loads(run(reg.handle(json.dumps({"id": i, "cmd": c})))) for i, c in enumerate(("pause",
                                                                                                    "snapshot"))]
    assert replies[0]["ok"] and not replies[1]["ok"]
    assert "'snapshot' is not allowed on this device" in replies[1]["error"]


def test_reload_on_a_running_pipeline_obeys_the_policy(tiny_model_path, models):
    root, outside = models
    policy = ControlPolicy(allow=("status", "reload", "pause", "resume"), models_dir=str(root))
    pipe = Pipeline(str(tiny_model_path), WavSource(DIGITS_WAV, fast=False, speed=4.0), [], metrics_interval=0,
                    control=policy)
    raw: list[bytes] = []
    chan = pipe.control_channel(raw.append, name="auth-test")
    requests = [
        {"cmd": "reload", "path": str(outside / "passwd")},
        {"cmd": "reload", "path": "../outside/evil.swm"},
        {"cmd": "reload", "path": "link.swm"},
        {"cmd": "reload", "path": "secret.swm"},   # inside, but not a model: refused without its bytes
        {"cmd": "snapshot"},                       # not in allow
        {"cmd": "reload", "path": "good.swm"},
        {"cmd": "reload", "path": "kws-digits"},   # a shipped name
        {"cmd": "reload"},                         # the current model again
    ]

    async def go():
        task = asyncio.create_task(pipe.run())
        worker = asyncio.create_task(chan.run())
        while not pipe._running:
            await asyncio.sleep(0.01)
        for i, r in enumerate(requests):
            chan.submit(json.dumps({"id": i, **r}))
        while len(raw) < len(requests):
            await asyncio.sleep(0.02)
        pipe.request_stop()
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        return await task

    final = run(go(), timeout=90)
    replies = sorted((json.loads(b) for b in raw), key=lambda r: r["id"])
    ok = [r["ok"] for r in replies]
    assert ok == [False, False, False, False, False, True, True, True], replies
    assert "outside the models folder" in replies[0]["error"]
    assert "'..' is not allowed" in replies[1]["error"]
    assert "outside the models folder" in replies[2]["error"]
    assert "not a spikewire model file" in replies[3]["error"]
    assert "'snapshot' is not allowed" in replies[4]["error"]
    assert replies[5]["result"]["model"] == "tiny-good"
    assert replies[6]["result"]["model"] == "kws-digits"
    assert replies[7]["result"]["model"] == "kws-digits"  # the current model is the last one loaded
    for b in raw:  # no reply carries any piece of a file that is not a model
        assert b"hunter2" not in b and b"/bin/bash" not in b and b"root:x" not in b, b
    assert chan.counts["control_errors"] == 1  # 'snapshot' at the door; reload refusals are handler errors
    assert final["model"] == "kws-digits"
    assert "kws-digits" in shipped_models()


def _cli(*args, timeout: float = 60.0):
    return subprocess.run([sys.executable, "-P", "-m", "spikewire.cli", *args], capture_output=True,
                          timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("table, message", [
    ('allow = "pause"', b"allow must be a list"),
    ("models = 1", b"unknown key(s) models"),
    ("enabled = 1", b"enabled must be true or false"),
])
def test_bad_control_table_exits_2(tmp_path, tiny_model_path, table, message):
    cfg = tmp_path / "device.toml"
    cfg.write_text(f'model = "{tiny_model_path}"\nsource = "stdin"\n[control]\n{table}\n')
    r = _cli("run", "--config", str(cfg))
    assert r.returncode == 2 and message in r.stderr and b"Traceback" not in r.stderr, r.stderr


# ---------------------------------------------------------------------------
# The MQTT side: enabled = false (no subscription), retained commands ignored (real broker)


class _Message:
    def __init__(self, payload: bytes, retain: bool = False, topic: str = "p/d/control"):
        self.payload, self.retain, self.topic = payload, retain, topic


class _RecordingClient:
    """Enough of aiomqtt.Client for MqttSink._session: records subscriptions, yields one control message."""

    def __init__(self):
        self.subscribed: list[str] = []
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, topic, payload, **kw):
        self.published.append((topic, bytes(payload)))

    async def subscribe(self, topic, **kw):
        self.subscribed.append(topic)

    @property
    def messages(self):
        async def gen():
            yield _Message(b'{"cmd": "pause", "id": 1}')
            await asyncio.Event().wait()
        return gen()


@pytest.mark.parametrize("enabled", [True, False])
def test_disabled_control_is_not_subscribed_and_not_read(enabled):
    pytest.importorskip("aiomqtt")
    from spikewire.mqtt import MqttSink

    calls: list = []
    reg = CommandRegistry()
    reg.register("pause", lambda: calls.append("pause"))
    sink = MqttSink("mqtt://127.0.0.1:1/p", "d", "m", commands=reg, control=enabled)
    client = _RecordingClient()

    async def go():
        sink._wake, sink._close_requested = asyncio.Event(), asyncio.Event()
        worker = asyncio.create_task(sink._control.run())
        session = asyncio.create_task(sink._session(client))
        for _ in range(50):
            await asyncio.sleep(0.01)
            if calls or (not enabled and sink.counters()["published"] == 0 and client.published):
                break
        sink._close_requested.set()
        sink._wake.set()
        finished = await session
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        return finished

    assert run(go(), 10) is True
    assert client.subscribed == (["p/d/control"] if enabled else [])
    assert calls == (["pause"] if enabled else [])
    assert sink.counters()["control_received"] == (1 if enabled else 0)


@pytest.mark.mqtt
def test_retained_control_command_is_ignored(mqtt_broker):
    """A retained ``pause`` waiting on the broker is not run when the device (re)connects; live ones are."""
    aiomqtt = pytest.importorskip("aiomqtt")
    from spikewire.mqtt import MqttSink

    prefix, dev = "t-retain", "r1"
    control = f"{prefix}/{dev}/control"
    calls: list = []
    reg = CommandRegistry()
    reg.register("pause", lambda: calls.append("pause") or "paused")
    reg.register("ping", lambda: "pong")

    async def go():
        async with aiomqtt.Client(**mqtt_broker.client_kwargs()) as op:
            await op.subscribe(f"{control}/reply", qos=1)
            await op.publish(control, b'{"cmd": "pause", "id": "retained"}', qos=1, retain=True)
            replies: list[dict] = []
            try:
                async with MqttSink(mqtt_broker.url(prefix), dev, "m", commands=reg) as sink:
                    await sink.wait_connected(5)
                    # a live ping is answered once the sink has subscribed; the retained pause, delivered
                    # at subscription (before any later message), must have been seen and ignored by then
                    i = 0
                    async with asyncio.timeout(10):
                        while not any(r["id"] == "ping" for r in replies):
                            i += 1
                            await op.publish(control, json.dumps({"cmd": "ping", "id": "ping"}).encode(), qos=1)
                            try:
                                async with asyncio.timeout(0.5):
                                    async for m in op.messages:
                                        replies.append(json.loads(m.payload))
                                        break
                            except TimeoutError:
                                pass
                    counters = sink.counters()
            finally:
                await op.publish(control, b"", qos=1, retain=True)  # clear the retained message
            return replies, counters

    replies, counters = run(go(), 30)
    assert calls == [] and counters["ignored_retained"] == 1, (replies, counters)
    assert all(r["id"] == "ping" and r["result"] == "pong" for r in replies), replies


def test_security_doc_examples_are_the_tested_ones(tmp_path):
    """docs/security.md shows the ACL that tests/test_mqtt_acl.py runs and a [control] table the CLI takes."""
    from test_mqtt_acl import ACL

    from spikewire.cli import _control_policy, _load_run_config

    text = (REPO / "docs" / "security.md").read_text()
    acl_lines = [ln for ln in ACL.splitlines() if ln and not ln.startswith("#")]
    shown = text.split("## The broker", 1)[1].split("```\n", 2)[1]
    assert [ln for ln in shown.splitlines() if ln] == acl_lines
    toml = text.split("```toml\n", 1)[1].split("```", 1)[0]
    cfg = tmp_path / "device.toml"
    cfg.write_text(toml)
    policy = _control_policy(_load_run_config(str(cfg))["control"])
    assert policy.allow == ("status", "pause", "resume", "reload") and policy.models_dir == "/var/lib/spikewire/models"


@pytest.mark.mqtt
@pytest.mark.parametrize("enabled", [True, False])
def test_disabled_control_on_a_real_broker(tmp_path, enabled):
    """``[control] enabled = false`` from a device.toml, the whole pipeline against a real mosquitto: the
    broker never sees the device subscribe to its ``control`` topic (its subscribe log), commands sent
    while the device streams keywords are neither run nor answered, and nothing is counted; the same
    run with ``enabled = true`` subscribes, answers and pauses (so the test can see each of these)."""
    aiomqtt = pytest.importorskip("aiomqtt")
    from conftest import Broker, _base_conf, _need, free_port

    from spikewire.cli import _load_run_config, _run_settings, build_pipeline

    _need("mosquitto")
    port = free_port()
    broker = Broker(tmp_path, port, _base_conf(tmp_path, port) + ["allow_anonymous true", "log_type subscribe",
                                                                  "log_dest stdout"])
    prefix, dev = "t-off", "dev1"
    control = f"{prefix}/{dev}/control"
    cfg_file = tmp_path / "device.toml"
    cfg_file.write_text(f'source = "wav:{DIGITS_WAV}"\nspeed = 4.0\nsink = ["mqtt://127.0.0.1:{port}/{prefix}"]\n'
                        f'device_id = "{dev}"\nmetrics_interval = 0\n\n[control]\nenabled = {str(enabled).lower()}\n')

    class Args:
        config = str(cfg_file)

    cfg = _run_settings(Args())
    assert cfg["control"] == {"enabled": enabled} == _load_run_config(str(cfg_file))["control"]

    async def go():
        pipe = build_pipeline(cfg)
        task = asyncio.create_task(pipe.run())
        got: list = []
        async with aiomqtt.Client(hostname="127.0.0.1", port=port, timeout=5) as op:
            await op.subscribe(f"{prefix}/{dev}/#", qos=1)

            async def collect():
                async for m in op.messages:
                    got.append((str(m.topic), bytes(m.payload)))
            reader = asyncio.create_task(collect())
            async with asyncio.timeout(20):  # the first keyword: the sink's session is past its subscribe step
                while not any(t.endswith("/keyword") for t, _ in got):
                    await asyncio.sleep(0.02)
            await op.publish(control, b'{"cmd": "pause", "id": "p"}', qos=1)
            final = await task            # the recording ends (a paused pipeline still reads its source)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        return final, got

    broker.start()
    try:
        final, got = run(go(), 60)
    finally:
        broker.stop()
    log = broker.log_file.read_text()
    subscribed = [ln for ln in log.splitlines() if ln.endswith(f" 1 {control}") and "spikewire-" in ln]
    replies = [json.loads(p) for t, p in got if t == f"{control}/reply"]
    counts = final["sinks"][next(iter(final["sinks"]))]
    assert any(t.endswith("/keyword") for t, _ in got)
    if enabled:
        assert len(subscribed) == 1, log[-2000:]
        assert replies == [{"id": "p", "ok": True, "result": replies[0]["result"]}] and final["paused"] is True
        assert counts["control_received"] == 1
    else:
        assert subscribed == [], log[-2000:]
        assert replies == [] and final["paused"] is False and final["counts"]["paused_steps"] == 0
        assert counts["control_received"] == 0 and counts["control_errors"] == 0
