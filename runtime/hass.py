"""Home Assistant MQTT discovery for one device (pure: builds topics and payloads, no I/O).

With ``[mqtt.homeassistant] discovery = true`` the MQTT sink announces the device to Home
Assistant on every connection, as retained QoS-1 messages on
``PREFIX/COMPONENT/DEVICE_ID/OBJECT_ID/config`` (HA's ``<discovery_prefix>/<component>/
[<node_id>/]<object_id>/config``, node id = device id, so one broker ACL line
``pattern write homeassistant/+/%u/+/config`` covers every device): the keywords as an
``event`` entity on the device's ``keyword`` topic (event types = the model's vocabulary), the
connection ``status`` as a ``binary_sensor``, and a few numbers from ``metrics`` as
``sensor``\\ s. Every entity is unavailable while ``status`` is ``offline`` (the sink's last
will). ``discovery = false`` removes the entities: an empty retained message on each of the
same config topics. docs/mqtt.md, "Home Assistant discovery".
"""
from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .wire import Topics

DEFAULT_PREFIX = "homeassistant"
_ID = re.compile(r"[A-Za-z0-9_-]+")  # HA: node_id and object_id characters

#: The keyword event as HA's event entity wants it: a JSON object whose ``event_type`` is one of
#: ``event_types``; the other keys become attributes of the event (``stretch``: the id that
#: ``label WORD ID`` names, null from a device that does not send it). (HA renders it with its
#: ``to_json`` filter; tests/test_hass.py renders it with Jinja2 on real keyword payloads.)
EVENT_TEMPLATE = ('{{ {"event_type": value_json.word, "score": value_json.score, '
                  '"t_start": value_json.t_start, "t_end": value_json.t_end, "model": value_json.model, '
                  '"seq": value_json.seq, "session": value_json.session, '
                  '"stretch": value_json.stretch | default(none)} | to_json }}')

#: Sensors taken from the metrics message: object id -> (name, template, extra config).
SENSORS: dict[str, tuple[str, str, dict]] = {
    "rtf": ("Real-time factor", "{{ value_json.rtf }}",
            {"state_class": "measurement", "suggested_display_precision": 3}),
    "keywords": ("Keywords", "{{ value_json.counts.keywords }}", {"state_class": "total_increasing"}),
    "latency_p99": ("Block latency p99", "{{ value_json.latency_ms.block_p99 }}",
                    {"device_class": "duration", "unit_of_measurement": "ms", "state_class": "measurement"}),
    "uptime": ("Uptime", "{{ value_json.uptime_s }}",
               {"device_class": "duration", "unit_of_measurement": "s", "state_class": "measurement"}),
    "mqtt_reconnects": ("MQTT reconnects", "{{ value_json.mqtt.reconnects }}", {"state_class": "total_increasing"}),
    "dropped_keywords": ("Dropped keywords", "{{ value_json.mqtt.dropped_keywords }}",
                         {"state_class": "total_increasing"}),
}


@dataclasses.dataclass(frozen=True)
class Discovery:
    """The ``[mqtt.homeassistant]`` settings: announce (``discovery = true``) or remove (``false``)."""

    discovery: bool
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not isinstance(self.discovery, bool):
            raise ValueError(f"homeassistant.discovery must be true or false, got {self.discovery!r:.40}")
        if not isinstance(self.prefix, str) or not self.prefix or any(c in self.prefix for c in "+#\0") \
                or self.prefix.startswith(("/", "$")) or self.prefix.endswith("/") or "//" in self.prefix:
            raise ValueError(f"homeassistant.prefix must be a topic prefix such as 'homeassistant', "
                             f"got {self.prefix!r:.60}")

    @classmethod
    def from_options(cls, value: Any) -> "Discovery | None":
        """From a TOML table (``{"discovery": bool, "prefix": str}``), a Discovery, or None."""
        if value is None or isinstance(value, Discovery):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"[mqtt.homeassistant] must be a table, got {type(value).__name__}")
        unknown = set(value) - {"discovery", "prefix"}
        if unknown:
            raise ValueError(f"[mqtt.homeassistant]: unknown key(s) {sorted(unknown)}; known: discovery, prefix")
        if "discovery" not in value:
            raise ValueError("[mqtt.homeassistant] needs discovery = true (announce) or false (remove)")
        return cls(**value)


def check_device_id(device_id: str) -> None:
    """HA allows only ``[A-Za-z0-9_-]`` in the node id, which is the device id here."""
    if not isinstance(device_id, str) or not _ID.fullmatch(device_id):
        raise ValueError(f"Home Assistant discovery needs a device id of letters, digits, '_' and '-' only "
                         f"(it is the node id of the discovery topics), got {device_id!r:.60}")


def config_topic(prefix: str, component: str, device_id: str, object_id: str) -> str:
    return f"{prefix}/{component}/{device_id}/{object_id}/config"


def entities() -> list[tuple[str, str]]:
    """(component, object id) of every entity a device announces, in publishing order."""
    return [("event", "keyword"), ("binary_sensor", "status")] + [("sensor", k) for k in SENSORS]


def discovery_messages(settings: Discovery, topics: Topics, *, model: str, vocabulary: Sequence[str],
                       version: str) -> list[tuple[str, bytes]]:
    """(topic, payload) of the retained discovery messages; empty payloads if ``discovery`` is false."""
    dev = topics.device_id
    check_device_id(dev)
    if not settings.discovery:
        return [(config_topic(settings.prefix, c, dev, o), b"") for c, o in entities()]
    device = {"identifiers": [f"spikewire_{dev}"], "name": f"spikewire {dev}", "manufacturer": "spikewire",
              "model": model, "sw_version": version}
    origin = {"name": "spikewire", "sw_version": version}
    avail = {"availability_topic": topics.status, "payload_available": "online",
             "payload_not_available": "offline"}

    def entity(object_id: str, name: str, **cfg: Any) -> dict:
        return {"name": name, "unique_id": f"spikewire_{dev}_{object_id}", **cfg, "device": device,
                "origin": origin}

    words = list(vocabulary)
    configs = {
        ("event", "keyword"): entity("keyword", "Keyword", state_topic=topics.keyword, event_types=words,
                                     value_template=EVENT_TEMPLATE, qos=1, **avail),
        # no availability: it is what shows the device offline
        ("binary_sensor", "status"): entity("status", "Status", state_topic=topics.status, payload_on="online",
                                            payload_off="offline", device_class="connectivity",
                                            entity_category="diagnostic", qos=1),
    }
    for object_id, (name, template, extra) in SENSORS.items():
        configs[("sensor", object_id)] = entity(object_id, name, state_topic=topics.metrics,
                                                value_template=template, entity_category="diagnostic",
                                                **extra, **avail)
    return [(config_topic(settings.prefix, c, dev, o), json.dumps(configs[(c, o)], sort_keys=True).encode())
            for c, o in entities()]
