"""Home Assistant MQTT discovery (runtime/hass.py, docs/mqtt.md "Home Assistant discovery") against a
real mosquitto: a late subscriber to ``homeassistant/#`` gets the retained config of every entity
(the JSON checked field by field against HA's discovery conventions), the event entity's template
turns the keyword payloads the device really published into HA events, availability follows the
device's ``status`` (its last will included), a reload re-announces the event types, and
``discovery = false`` removes every entity (the retained configs are gone)."""

from __future__ import annotations

import json
import uuid

import pytest

from conftest import SHIPPED_DEMO_WORDS, Subscriber, run_bounded
from spikewire import __version__
from spikewire.hass import EVENT_TEMPLATE, SENSORS, Discovery, discovery_messages
from spikewire.mqtt import MqttSink
from spikewire.wire import Topics, encode_metrics

aiomqtt = pytest.importorskip("aiomqtt")
pytestmark = pytest.mark.mqtt

WORDS = ["zero", "one", "two"]


@pytest.fixture
def ids():
    tag = uuid.uuid4().hex[:8]
    return f"swha{tag}", f"pi-{tag}"  # (HA discovery prefix, device id): one test's own topics


def ha_render(template: str, payload: bytes) -> str:
    """Render an MQTT value template the way Home Assistant does (value, value_json, to_json)."""
    jinja2 = pytest.importorskip("jinja2")
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment()
    env.filters["to_json"] = json.dumps
    return env.from_string(template).render(value=payload.decode(), value_json=json.loads(payload))


def test_discovery_retained_configs_events_and_availability(mqtt_broker, ids):
    ha, dev = ids
    prefix = "spikewire"

    async def go():
        url = mqtt_broker.url(prefix)
        async with Subscriber(mqtt_broker, f"{prefix}/{dev}/keyword") as kws, \
                MqttSink(url, dev, "kws-test", vocabulary=WORDS,
                         homeassistant={"discovery": True, "prefix": ha}) as sink:
            kw = await sink.publish_keyword({"word": "two", "score": 0.5, "t_start": 1.0, "t_end": 1.25})
            # keywords go out after the discovery configs and status of the connection
            await kws.wait_for(lambda m: m)
            # HA starts after the device: it sees the retained configs and status
            async with Subscriber(mqtt_broker, f"{ha}/#", f"{prefix}/{dev}/status") as sub:
                await sub.wait_for(lambda m: any(t.endswith("/status") for t, _, _ in m))
                during = list(sub.messages) + kws.messages
        async with Subscriber(mqtt_broker, f"{ha}/#", f"{prefix}/{dev}/status") as sub:
            await sub.wait_for(lambda m: any(p == b"offline" for _, p, _ in m)
                               and sum(t.startswith(ha) for t, _, _ in m) == 2 + len(SENSORS))
            after = list(sub.messages)
        return sink, kw, during, after

    sink, kw, during, after = run_bounded(go())
    topics = Topics(prefix, dev)
    configs = {t: (json.loads(p), r) for t, p, r in during if t.startswith(ha)}
    expected_topics = {f"{ha}/event/{dev}/keyword/config", f"{ha}/binary_sensor/{dev}/status/config"} | {
        f"{ha}/sensor/{dev}/{k}/config" for k in SENSORS}
    assert set(configs) == expected_topics
    assert all(retained for _, retained in configs.values())
    docs = {t: c for t, (c, _) in configs.items()}
    uids = [c["unique_id"] for c in docs.values()]
    assert len(set(uids)) == len(uids) and all(u.startswith(f"spikewire_{dev}_") for u in uids)
    for c in docs.values():  # one device in HA's registry, with where the config came from
        assert c["device"] == {"identifiers": [f"spikewire_{dev}"], "name": f"spikewire {dev}",
                               "manufacturer": "spikewire", "model": "kws-test", "sw_version": __version__}
        assert c["origin"] == {"name": "spikewire", "sw_version": __version__}
        assert isinstance(c["name"], str) and c["name"]

    event = docs[f"{ha}/event/{dev}/keyword/config"]
    assert event["state_topic"] == topics.keyword and event["event_types"] == WORDS
    assert event["availability_topic"] == topics.status
    assert (event["payload_available"], event["payload_not_available"]) == ("online", "offline")
    # the keyword the device published, through the entity's template, is an HA event of a known type
    (payload,) = [p for t, p, _ in during if t == topics.keyword]
    ha_event = json.loads(ha_render(event["value_template"], payload))
    assert ha_event["event_type"] == "two" and ha_event["event_type"] in event["event_types"]
    assert ha_event["seq"] == kw and ha_event["score"] == 0.5 and ha_event["t_end"] == 1.25
    assert ha_event["session"] == sink.session and ha_event["model"] == "kws-test"
    assert ha_event["stretch"] is None  # this payload carries no stretch id: null, not a template error

    status = docs[f"{ha}/binary_sensor/{dev}/status/config"]
    assert status["state_topic"] == topics.status and "availability_topic" not in status
    assert (status["payload_on"], status["payload_off"], status["device_class"]) == ("online", "offline",
                                                                                     "connectivity")
    assert (topics.status, b"online", True) in during and (topics.status, b"offline", True) in after
    # after the clean stop the configs stay (retained) and availability says offline
    assert {t for t, _, r in after if t.startswith(ha) and r} == expected_topics

    # each sensor's template reads its number out of a real metrics message
    metrics = json.loads(encode_metrics(
        {"rtf": 0.125, "counts": {"keywords": 7}, "latency_ms": {"block_p99": 3.5}, "uptime_s": 12.0},
        t_wall=0.0, session="s", mqtt={"reconnects": 2, "dropped_keywords": 1}))
    values = {k: ha_render(docs[f"{ha}/sensor/{dev}/{k}/config"]["value_template"], json.dumps(metrics).encode())
              for k in SENSORS}
    assert values == {"rtf": "0.125", "keywords": "7", "latency_p99": "3.5", "uptime": "12.0",
                      "mqtt_reconnects": "2", "dropped_keywords": "1"}
    for k in SENSORS:
        c = docs[f"{ha}/sensor/{dev}/{k}/config"]
        assert c["state_topic"] == topics.metrics and c["availability_topic"] == topics.status


def test_reload_reannounces_and_disable_removes(mqtt_broker, ids):
    ha, dev = ids
    prefix = "spikewire"
    event_topic = f"{ha}/event/{dev}/keyword/config"

    async def go():
        url = mqtt_broker.url(prefix)
        async with Subscriber(mqtt_broker, f"{ha}/#") as sub:
            async with MqttSink(url, dev, "m1", vocabulary=WORDS, homeassistant={"discovery": True,
                                                                                  "prefix": ha}) as sink:
                await sub.wait_for(lambda m: [t for t, _, _ in m].count(event_topic) == 1)
                sink.set_model("m2", ["yes", "no"])
                await sub.wait_for(lambda m: [t for t, _, _ in m].count(event_topic) == 2)
                sink.set_model("m2", ["yes", "no"])  # unchanged: nothing new
            reannounced = [json.loads(p) for t, p, _ in sub.messages if t == event_topic]
        # the same device started with discovery = false removes all its entities
        async with MqttSink(url, dev, "m2", homeassistant={"discovery": False, "prefix": ha}):
            pass
        async with Subscriber(mqtt_broker, f"{ha}/#", f"{prefix}/{dev}/status") as late:
            # retained messages come after each SUBACK, in subscription order: once the status is in,
            # anything still retained under the HA prefix would have arrived before it
            await late.wait_for(lambda m: any(t.endswith("/status") for t, _, _ in m))
            left = [(t, p) for t, p, _ in late.messages if t.startswith(ha)]
        return reannounced, left

    reannounced, left = run_bounded(go())
    assert [c["event_types"] for c in reannounced] == [WORDS, ["yes", "no"]]
    assert [c["device"]["model"] for c in reannounced] == ["m1", "m2"]
    assert left == []


def test_removal_messages_are_empty_on_every_config_topic():
    t = Topics("spikewire", "pi-1")
    on = discovery_messages(Discovery(True), t, model="m", vocabulary=WORDS, version="1")
    off = discovery_messages(Discovery(False), t, model="m", vocabulary=WORDS, version="1")
    assert [topic for topic, _ in on] == [topic for topic, _ in off]
    assert all(p == b"" for _, p in off) and all(json.loads(p) for _, p in on)
    assert all(topic.startswith("homeassistant/") and topic.split("/")[2] == "pi-1" for topic, _ in on)


@pytest.mark.parametrize("bad", [{"discovery": "yes"}, {"prefix": "ha"}, {"discovery": True, "x": 1},
                                 {"discovery": True, "prefix": "ha/+"}, {"discovery": True, "prefix": ""}, []])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        Discovery.from_options(bad)


def test_device_id_must_suit_ha_and_config_errors_exit_2(tmp_path, capsys):
    with pytest.raises(ValueError, match="letters, digits"):
        MqttSink("mqtt://localhost/x", "pi.kitchen", "m", homeassistant={"discovery": True})
    MqttSink("mqtt://localhost/x", "pi.kitchen", "m")  # without discovery any single level is fine
    from spikewire.cli import main

    cfg = tmp_path / "d.toml"
    cfg.write_text('source = "stdin"\ndevice_id = "pi.kitchen"\n'
                   'sinks = ["mqtt://127.0.0.1:9/spikewire"]\n[mqtt.homeassistant]\ndiscovery = true\n')
    assert main(["run", "--config", str(cfg)]) == 2
    assert "letters, digits" in capsys.readouterr().err
    cfg.write_text('sinks = ["mqtt://127.0.0.1:9/spikewire"]\n[mqtt.homeassistant]\ndiscover = true\n')
    assert main(["run", "--config", str(cfg)]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_event_template_is_the_one_documented():
    from conftest import REPO

    assert EVENT_TEMPLATE in (REPO / "docs" / "mqtt.md").read_text()


def test_run_config_announces_the_models_vocabulary(mqtt_broker, ids):
    """Through the run settings ([mqtt.homeassistant] under [mqtt]) and the pipeline: the event types are
    the loaded model's vocabulary and the keywords of the demo recording are HA events of those types."""
    from spikewire.cli import RUN_DEFAULTS, build_pipeline, demo_recording
    from spikewire.model import Model, resolve
    from spikewire.pipeline import run_pipeline

    ha, dev = ids
    cfg = dict(RUN_DEFAULTS, source=f"wav:{demo_recording()}", fast=True, device_id=dev, metrics_interval=0.0,
               sink=[mqtt_broker.url("spikewire")], mqtt={"homeassistant": {"discovery": True, "prefix": ha}})

    async def go():
        async with Subscriber(mqtt_broker, f"spikewire/{dev}/keyword") as kws:
            await run_pipeline(build_pipeline(cfg))
            await kws.wait_for(lambda m: len(m) >= len(SHIPPED_DEMO_WORDS))
        async with Subscriber(mqtt_broker, f"{ha}/event/{dev}/keyword/config") as sub:
            await sub.wait_for(lambda m: m)
        return kws.messages, sub.messages

    kws, configs = run_bounded(go(), timeout=60)
    vocabulary = Model.load(resolve("kws-digits")).vocabulary
    (config,) = [json.loads(p) for _, p, _ in configs]
    assert config["event_types"] == vocabulary and config["device"]["model"] == "kws-digits"
    events = [json.loads(ha_render(config["value_template"], p)) for _, p, _ in kws]
    assert all(e["event_type"] in vocabulary for e in events)
    assert [e["event_type"] for e in events] == [json.loads(p)["word"] for _, p, _ in kws]
    # the stretch id reaches Home Assistant as an attribute, so an automation can send `label WORD ID`
    assert [e["stretch"] for e in events] == [json.loads(p)["stretch"] for _, p, _ in kws]
    assert all(isinstance(e["stretch"], int) for e in events)
