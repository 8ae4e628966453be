"""The broker ACL recipe for several devices (docs/mqtt.md, "Access control") against a real mosquitto.

Each device logs in with its device id as user name and may publish only its own output topics
under ``PREFIX/<its id>/`` (never its own ``control``) and read only its own ``control`` topic; the
operator reads everything and is the only one who may publish ``control`` (for any device). A denied publish is dropped silently by the broker
(MQTT 3.1.1), so every "is not delivered" check publishes an allowed marker after it on the same
connection: messages of one client arrive in order, so once the marker is in, the denied one
would have been too.
"""

from __future__ import annotations

import asyncio
import json
import subprocess

import pytest

from conftest import REPO, Broker, _base_conf, _need, free_port, run_bounded

from spikewire.mqtt import MqttSink

aiomqtt = pytest.importorskip("aiomqtt")

PREFIX = "fleet"
USERS = {"operator": "op-pw", "homeassistant": "ha-pw", "pi-01": "pw-01", "pi-02": "pw-02"}
pytestmark = pytest.mark.mqtt


def docs_acl() -> str:
    """The ACL file exactly as docs/mqtt.md shows it (the first code block of its section)."""
    text = (REPO / "docs" / "mqtt.md").read_text()
    section = text.split("## Access control for several devices", 1)[1]
    return section.split("```\n", 2)[1]


ACL = docs_acl()


@pytest.fixture(scope="module")
def acl_broker(tmp_path_factory):
    _need("mosquitto")
    _need("mosquitto_passwd")
    workdir = tmp_path_factory.mktemp("mosquitto-acl")
    passwd = workdir / "passwd"
    for i, (user, pw) in enumerate(USERS.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(passwd), user, pw],
                       check=True, capture_output=True, timeout=10)
    acl = workdir / "acl"
    acl.write_text(ACL)
    port = free_port()
    conf = _base_conf(workdir, port) + ["allow_anonymous false", f"password_file {passwd}", f"acl_file {acl}"]
    broker = Broker(workdir, port, conf)
    broker.start()
    yield broker
    broker.stop()


def client(broker: Broker, user: str) -> aiomqtt.Client:
    return aiomqtt.Client(hostname=broker.host, port=broker.port, username=user, password=USERS[user],
                          timeout=5)


async def collect(c: aiomqtt.Client, into: list, event: asyncio.Event):
    async for m in c.messages:
        into.append((str(m.topic), bytes(m.payload)))
        event.set()


async def wait_until(pred, event: asyncio.Event, timeout: float = 5.0):
    async with asyncio.timeout(timeout):
        while not pred():
            event.clear()
            await event.wait()


def test_docs_acl_is_the_recipe():
    lines = ACL.splitlines()
    assert "topic write fleet/+/control" in lines and "pattern read fleet/%u/control" in lines, ACL
    # a device writes its output topics one by one: no wildcard that would cover its own control topic
    device_writes = [ln.split()[-1] for ln in lines if ln.startswith("pattern write fleet/")]
    assert sorted(device_writes) == sorted(f"fleet/%u/{t}" for t in
                                           ("status", "keyword", "rejected", "metrics", "spikes/+",
                                                                     "control/reply")), ACL
    assert "pattern write homeassistant/+/%u/+/config" in lines, ACL
    assert "pattern write homeassistant/+/%u/+/config" in ACL.splitlines(), ACL


def test_device_publishes_only_its_output_topics(acl_broker):
    """The real sink (status, will, keyword, rejected, spikes, metrics, a control reply) fits the device's rights;
    other devices' topics, its own control topic and anything else under its prefix are refused."""
    from spikewire.wire import encode_spike_batch

    async def go():
        seen: list = []
        new = asyncio.Event()
        async with client(acl_broker, "operator") as op:
            await op.subscribe(f"{PREFIX}/#", qos=1)
            task = asyncio.create_task(collect(op, seen, new))
            url = f"mqtt://pi-01:{USERS['pi-01']}@{acl_broker.host}:{acl_broker.port}/{PREFIX}"
            async with MqttSink(url, "pi-01", "m") as sink:
                await sink.wait_connected(5)
                await sink.publish_keyword({"word": "seven", "score": 0.9, "t_start": 1.0, "t_end": 1.5})
                sink.publish_spikes("input", encode_spike_batch(0, 2, [0, 1], [3, 4], n_units=8))
                sink.publish_metrics({"steps": 2})
                sink.publish_rejected({"stretch": 3, "best": "six", "score": 0.2, "t_start": 2.0, "t_end": 2.1,
                                       "reason": "short"})
                want = {f"{PREFIX}/pi-01/{t}" for t in ("keyword", "rejected", "spikes/input", "metrics")}
                await wait_until(lambda: want <= {t for t, _ in seen}, new)
                # the sink publishes these only after it has subscribed to its control topic
                await op.publish(f"{PREFIX}/pi-01/control", b'{"cmd": "nothing", "id": 1}', qos=1)
                await wait_until(lambda: f"{PREFIX}/pi-01/control/reply" in {t for t, _ in seen}, new)
            # a client logged in as pi-01 tries to speak for pi-02 and to command itself, then sends an
            # allowed marker (one client's messages arrive in order)
            async with client(acl_broker, "pi-01") as rogue:
                await rogue.publish(f"{PREFIX}/pi-02/keyword", b'{"word": "forged"}', qos=1)
                await rogue.publish(f"{PREFIX}/pi-02/status", b"online", qos=1)
                await rogue.publish(f"{PREFIX}/pi-01/control", b'{"cmd": "pause", "id": "forged"}', qos=1)
                await rogue.publish(f"{PREFIX}/pi-01/other", b"x", qos=1)
                await rogue.publish(f"{PREFIX}/pi-01/keyword", b"marker", qos=1)
                await wait_until(lambda: (f"{PREFIX}/pi-01/keyword", b"marker") in seen, new)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return seen

    seen = run_bounded(go())
    topics = [t for t, _ in seen]
    assert (f"{PREFIX}/pi-01/status", b"online") in seen and (f"{PREFIX}/pi-01/status", b"offline") in seen
    assert json.loads(next(p for t, p in seen if t == f"{PREFIX}/pi-01/keyword"))["word"] == "seven"
    assert json.loads(next(p for t, p in seen if t == f"{PREFIX}/pi-01/rejected"))["stretch"] == 3
    assert json.loads(dict(seen)[f"{PREFIX}/pi-01/control/reply"])["id"] == 1
    # the operator's command is the only message on pi-01's control topic; nothing else of the rogue's
    assert [p for t, p in seen if t == f"{PREFIX}/pi-01/control"] == [b'{"cmd": "nothing", "id": 1}']
    assert f"{PREFIX}/pi-01/other" not in topics
    assert not any(t.startswith(f"{PREFIX}/pi-02/") for t in topics), topics


def test_operator_commands_devices_devices_read_only_their_control(acl_broker):
    async def go():
        got: list = []
        new = asyncio.Event()
        async with client(acl_broker, "pi-02") as dev, client(acl_broker, "operator") as op:
            await dev.subscribe(f"{PREFIX}/+/control", qos=1)
            task = asyncio.create_task(collect(dev, got, new))
            await op.publish(f"{PREFIX}/pi-01/control", b'{"cmd": "pause"}', qos=1)
            await op.publish(f"{PREFIX}/pi-02/control", b'{"cmd": "resume"}', qos=1)
            await wait_until(lambda: got, new)
            # a device may not command another device. The two senders are different clients;
            # mosquitto routes a QoS 1 publish before it acknowledges it, so the forged command
            # (if it were allowed) is queued for pi-02 before the operator sends the marker.
            async with client(acl_broker, "pi-01") as other:
                await other.publish(f"{PREFIX}/pi-02/control", b'{"cmd": "forged"}', qos=1)
            await op.publish(f"{PREFIX}/pi-02/control", b'{"cmd": "marker"}', qos=1)
            await wait_until(lambda: len(got) >= 2, new)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return got

    got = run_bounded(go())
    assert got == [(f"{PREFIX}/pi-02/control", b'{"cmd": "resume"}'),
                   (f"{PREFIX}/pi-02/control", b'{"cmd": "marker"}')]


def test_device_writes_only_its_own_home_assistant_discovery(acl_broker):
    """The sink as pi-01 with discovery on: Home Assistant's login gets its retained configs; pi-01
    cannot write pi-02's discovery configs (the ACL line ``pattern write homeassistant/+/%u/+/config``)."""
    from spikewire.hass import SENSORS

    async def go():
        url = f"mqtt://pi-01:{USERS['pi-01']}@{acl_broker.host}:{acl_broker.port}/{PREFIX}"
        seen: list = []
        new = asyncio.Event()
        async with MqttSink(url, "pi-01", "m", vocabulary=["yes"], homeassistant={"discovery": True}):
            async with client(acl_broker, "operator") as op:  # the sink says online after its configs
                await op.subscribe(f"{PREFIX}/pi-01/status", qos=1)
                task = asyncio.create_task(collect(op, seen, new))
                await wait_until(lambda: (f"{PREFIX}/pi-01/status", b"online") in seen, new)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            seen.clear()
            async with client(acl_broker, "pi-01") as rogue:
                await rogue.publish("homeassistant/sensor/pi-02/rtf/config", b'{"name": "forged"}', qos=1,
                                    retain=True)
            async with client(acl_broker, "homeassistant") as ha:  # HA connects later: retained configs
                # retained messages come after each SUBACK, in subscription order: once the device's
                # retained status is in, every retained config (allowed or forged) has arrived
                await ha.subscribe("homeassistant/#", qos=1)
                await ha.subscribe(f"{PREFIX}/pi-01/status", qos=1)
                task = asyncio.create_task(collect(ha, seen, new))
                await wait_until(lambda: any(t == f"{PREFIX}/pi-01/status" for t, _ in seen), new)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        return [(t, p) for t, p in seen if t.startswith("homeassistant/")]

    seen = run_bounded(go())
    assert all(t.split("/")[2] == "pi-01" for t, _ in seen), seen
    assert {t.split("/")[3] for t, _ in seen} == {"keyword", "status", *SENSORS}
    assert all(json.loads(p)["device"]["identifiers"] == ["spikewire_pi-01"] for _, p in seen)
