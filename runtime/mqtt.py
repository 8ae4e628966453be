"""MQTT layer: broker URLs, topics, payload codecs and the async :class:`MqttSink`.

The wire protocol (topics, JSON schemas, the binary spike-batch layout, control
commands, buffering and reconnection policy) is specified in ``docs/mqtt.md``;
this module is its reference implementation. The control protocol itself
(``ControlCommand``, ``parse_control``, ``encode_reply``, ``CommandRegistry``) lives in
``runtime/control.py`` and is re-exported here. Everything above the
``MqttSink`` section is pure (no I/O, no event loop) and usable on its own,
e.g. by the ``mqtt:TOPIC`` spike source, which only needs
:func:`decode_spike_batch`.

All ``MqttSink`` methods must be called from the event loop thread that
entered it. ``aiomqtt`` is imported lazily, so the codecs work without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import random
import secrets
import ssl
import struct
import time
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, unquote

import numpy as np

# the control protocol and the payload basics live in their own modules; re-exported here
from .control import (  # noqa: F401
    ArgType,
    CommandError,
    CommandRegistry,
    CommandSpec,
    ControlCommand,
    ControlPayloadError,
    encode_reply,
    parse_control,
)
from .wire import PayloadError, decode_json_object, json_safe
from .wire import json_safe as _json_safe  # noqa: F401  (old private name)

try:  # only the sink needs it; the codecs work without it
    import aiomqtt
except ImportError:  # pragma: no cover - exercised only where aiomqtt is missing
    aiomqtt = None

__all__ = [
    "DEFAULT_PORTS",
    "POPULATION_IDS",
    "SPIKE_FLAG_WIDE",
    "SPIKE_HEADER",
    "SPIKE_MAGIC",
    "SPIKE_VERSION",
    "Backoff",
    "CommandError",
    "CommandRegistry",
    "CommandSpec",
    "ControlPayloadError",
    "KEYWORD_FIELDS",
    "ControlCommand",
    "MqttAuthError",
    "MqttSink",
    "MqttSinkError",
    "MqttTlsError",
    "MqttUrl",
    "PayloadError",
    "SpikeBatch",
    "Topics",
    "decode_keyword",
    "decode_spike_batch",
    "encode_keyword",
    "encode_reply",
    "encode_spike_batch",
    "encode_spike_raster",
    "parse_control",
    "parse_mqtt_url",
]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Broker URL
# ---------------------------------------------------------------------------

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
_TLS_QUERY_KEYS = {"cafile": "ca_file", "certfile": "cert_file", "keyfile": "key_file", "insecure": "insecure"}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclasses.dataclass(frozen=True)
class MqttUrl:
    """A parsed ``mqtt://`` / ``mqtts://`` broker URL. Build it with :func:`parse_mqtt_url`.

    ``repr()`` and ``str()`` never contain the password (it shows as ``***``).
    """

    host: str
    port: int
    prefix: str
    tls: bool = False
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False

    @property
    def scheme(self) -> str:
        return "mqtts" if self.tls else "mqtt"

    def redacted(self) -> str:
        """The URL with the password replaced by ``***`` (safe for logs)."""
        user = ""
        if self.username is not None:
            user = self.username + (":***" if self.password is not None else "") + "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = [f"{k}={getattr(self, attr)}" for k, attr in _TLS_QUERY_KEYS.items()
                 if k != "insecure" and getattr(self, attr)]
        if self.insecure:
            query.append("insecure=1")
        return f"{self.scheme}://{user}{host}:{self.port}/{self.prefix}" + ("?" + "&".join(query) if query else "")

    def __str__(self) -> str:
        return self.redacted()

    def __repr__(self) -> str:
        return f"MqttUrl({self.redacted()!r})"

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context for ``mqtts`` URLs, ``None`` for plain ``mqtt``.

        Raises ``ValueError`` naming the file if the CA, certificate or key cannot be loaded.
        """
        if not self.tls:
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"MQTT TLS: cannot load CA file {self.ca_file!r}: {exc}") from None
        if self.cert_file:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"MQTT TLS: cannot load client certificate {self.cert_file!r} / key {self.key_file!r}: {exc}"
                ) from None
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


def _check_topic_level(value: str, what: str) -> None:
    """``what`` names the value in messages, e.g. "device id 'pi-01'"."""
    if not value:
        raise ValueError(f"{what} has an empty topic level")
    for ch in ("+", "#", "\0"):
        if ch in value:
            raise ValueError(f"{what} must not contain {ch!r}")


def _check_prefix(prefix: str) -> None:
    what = f"topic prefix {prefix!r}"
    if prefix.startswith("$"):
        raise ValueError(f"{what} must not start with '$' (reserved for broker topics)")
    for level in prefix.split("/"):
        _check_topic_level(level, what)


def parse_mqtt_url(
    url: str,
    *,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    insecure: bool | None = None,
) -> MqttUrl:
    """Parse ``mqtt[s]://[user[:password]@]host[:port]/PREFIX[?cafile=..&certfile=..&keyfile=..&insecure=1]``.

    Default ports: 1883 (``mqtt``), 8883 (``mqtts``). ``user`` and ``password``
    are percent-decoded (encode ``@ : / ? #`` in them). ``PREFIX`` may have
    several levels (``lab/kws``). TLS options may be given in the query or as
    keyword arguments (which win); they are only valid with ``mqtts``.
    ``insecure`` disables certificate and hostname checks: for tests only.

    Raises
    ------
    ValueError
        Naming the bad part (scheme, host, port, prefix, query key, ...). The
        password is never included in the message.
    """
    if not isinstance(url, str):
        raise TypeError(f"MQTT URL must be a str, got {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("MQTT URL: missing scheme; expected mqtt://host/PREFIX or mqtts://host/PREFIX")
    scheme = scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(f"MQTT URL: unsupported scheme {scheme!r}; expected 'mqtt' or 'mqtts'")
    if "#" in rest:
        raise ValueError("MQTT URL: '#' is not allowed (fragment or wildcard); percent-encode it in a password")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    username = password = None
    if at:
        user_raw, colon, pw_raw = userinfo.partition(":")
        username = unquote(user_raw)
        if not username:
            raise ValueError("MQTT URL: empty user name before '@'")
        if colon:
            password = unquote(pw_raw)
    if hostport.startswith("["):
        host, bracket, port_raw = hostport[1:].partition("]")
        if not bracket:
            raise ValueError(f"MQTT URL: unterminated IPv6 host {hostport!r}")
        if port_raw and not port_raw.startswith(":"):
            raise ValueError(f"MQTT URL: junk {port_raw!r} after IPv6 host")
        port_raw = port_raw[1:] if port_raw else None
    else:
        host, colon, port_raw = hostport.partition(":")
        port_raw = port_raw if colon else None
    if not host:
        raise ValueError("MQTT URL: missing host")
    if any(c.isspace() for c in host):
        raise ValueError(f"MQTT URL: host {host!r} contains whitespace")
    if port_raw is None:
        port = DEFAULT_PORTS[scheme]
    else:
        if not port_raw.isdigit() or not 1 <= int(port_raw) <= 65535:
            raise ValueError(f"MQTT URL: port {port_raw!r} is not an integer in 1..65535")
        port = int(port_raw)
    prefix = path.rstrip("/")
    if not prefix:
        raise ValueError("MQTT URL: missing topic prefix; expected mqtt://host[:port]/PREFIX")
    _check_prefix(prefix)

    opts: dict[str, Any] = {"ca_file": None, "cert_file": None, "key_file": None, "insecure": False}
    seen: set[str] = set()
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in _TLS_QUERY_KEYS:
            raise ValueError(f"MQTT URL: unknown query option {key!r}; known: {', '.join(_TLS_QUERY_KEYS)}")
        if key in seen:
            raise ValueError(f"MQTT URL: query option {key!r} given twice")
        seen.add(key)
        if key == "insecure":
            if value.lower() not in _TRUE | _FALSE | {""}:
                raise ValueError(f"MQTT URL: insecure={value!r} is not a boolean (use 1/0, true/false)")
            opts["insecure"] = value.lower() in _TRUE or value == ""
        else:
            if not value:
                raise ValueError(f"MQTT URL: query option {key!r} has an empty value")
            opts[_TLS_QUERY_KEYS[key]] = value
    for attr, value in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file), ("insecure", insecure)):
        if value is not None:
            opts[attr] = value
    if scheme == "mqtt":
        used = [a for a in ("ca_file", "cert_file", "key_file") if opts[a]] + (["insecure"] if opts["insecure"] else [])
        if used:
            raise ValueError(f"MQTT URL: TLS option(s) {', '.join(used)} need the mqtts:// scheme")
    if opts["key_file"] and not opts["cert_file"]:
        raise ValueError("MQTT URL: keyfile given without certfile")
    return MqttUrl(host=host, port=port, prefix=prefix, tls=scheme == "mqtts",
                   username=username, password=password, **opts)


# ---------------------------------------------------------------------------
# Topics
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Topics:
    """The topic names of one device: everything lives under ``PREFIX/DEVICE_ID/``."""

    prefix: str
    device_id: str

    def __post_init__(self) -> None:
        _check_prefix(self.prefix)
        if not isinstance(self.device_id, str) or "/" in self.device_id:
            raise ValueError(f"device id {self.device_id!r} must be a single topic level (no '/')")
        _check_topic_level(self.device_id, f"device id {self.device_id!r}")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def keyword(self) -> str:
        return f"{self.base}/keyword"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def metrics(self) -> str:
        return f"{self.base}/metrics"

    @property
    def control(self) -> str:
        return f"{self.base}/control"

    @property
    def control_reply(self) -> str:
        return f"{self.base}/control/reply"

    def spikes(self, population: str) -> str:
        if not isinstance(population, str) or "/" in population:
            raise ValueError(f"population name {population!r} must be a single topic level (no '/')")
        _check_topic_level(population, f"population name {population!r}")
        return f"{self.base}/spikes/{population}"


# ---------------------------------------------------------------------------
# Binary spike batches (layout: docs/mqtt.md, "Spike batches")
# ---------------------------------------------------------------------------

SPIKE_MAGIC = b"SWSB"
SPIKE_VERSION = 1
SPIKE_FLAG_WIDE = 0x01  #: records are (u32 step offset, u32 unit) instead of (u16, u16)
#: magic, version, flags, population id, n_units, n_steps, t0, n_records
SPIKE_HEADER = struct.Struct("<4sBBHIIQI")
_NARROW = np.dtype([("step", "<u2"), ("unit", "<u2")])
_WIDE = np.dtype([("step", "<u4"), ("unit", "<u4")])
_NARROW_LIMIT = 1 << 16
#: Well-known population ids; other populations may use any other u16.
POPULATION_IDS = {"input": 0, "hidden": 1, "output": 2}


@dataclasses.dataclass(frozen=True, eq=False)
class SpikeBatch:
    """Spikes of one population over ``n_steps`` consecutive time steps starting at step ``t0``.

    ``steps`` are offsets from ``t0`` (``0 <= step < n_steps``) and ``units`` are
    unit indices (``0 <= unit < n_units``), both ``uint32`` arrays of equal
    length, sorted by ``(step, unit)``.  A repeated ``(step, unit)`` record is
    one more spike of that unit in that step (input channels can fire several
    times per step), so counts survive the round trip.
    """

    t0: int
    n_steps: int
    n_units: int
    steps: np.ndarray
    units: np.ndarray
    population: int = 0
    version: int = SPIKE_VERSION

    def __len__(self) -> int:
        return int(self.steps.size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SpikeBatch):
            return NotImplemented
        return ((self.t0, self.n_steps, self.n_units, self.population, self.version)
                == (other.t0, other.n_steps, other.n_units, other.population, other.version)
                and np.array_equal(self.steps, other.steps) and np.array_equal(self.units, other.units))

    __hash__ = None  # type: ignore[assignment]

    @property
    def absolute_steps(self) -> np.ndarray:
        """Absolute step index of each spike (``t0 + steps``) as ``uint64``."""
        return self.steps.astype(np.uint64) + np.uint64(self.t0)

    def to_raster(self) -> np.ndarray:
        """Dense raster of spike counts, shape ``(n_steps, n_units)`` (uint8, saturating at 255)."""
        counts = np.zeros((self.n_steps, self.n_units), dtype=np.int64)
        np.add.at(counts, (self.steps.astype(np.int64), self.units.astype(np.int64)), 1)
        return np.minimum(counts, 255).astype(np.uint8)


def _check_uint(name: str, value: Any, bits: int, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if not minimum <= value < (1 << bits):
        raise ValueError(f"{name}={value} out of range [{minimum}, 2**{bits})")
    return value


def _as_index_array(name: str, values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    return arr


def encode_spike_batch(
    t0: int,
    n_steps: int,
    steps: Any,
    units: Any,
    *,
    n_units: int | None = None,
    population: int = 0,
) -> bytes:
    """Encode one block of spikes as a binary spike batch (see docs/mqtt.md).

    Parameters
    ----------
    t0 : int
        Absolute index of the first time step in the block (u64).
    n_steps : int
        Number of time steps in the block (>= 1).
    steps, units : array_like of int
        One entry per spike: step *offset* from ``t0`` (``0 <= s < n_steps``) and
        unit index (``0 <= u < n_units``). Any order; they are sorted by
        ``(step, unit)``. A repeated ``(step, unit)`` pair is an error.
    n_units : int, optional
        Population width. Pass it: it lets receivers range-check units. If
        omitted it is ``max(units) + 1`` (1 for an empty block).
    population : int
        Population id (u16), e.g. ``POPULATION_IDS["input"]``.

    Returns
    -------
    bytes
        Header plus records; the narrow (u16, u16) record form is used when
        ``n_steps`` and ``n_units`` are both <= 65536, else the wide (u32, u32) form.
    """
    t0 = _check_uint("t0", t0, 64)
    n_steps = _check_uint("n_steps", n_steps, 32, minimum=1)
    population = _check_uint("population", population, 16)
    steps_a = _as_index_array("steps", steps)
    units_a = _as_index_array("units", units)
    if steps_a.size != units_a.size:
        raise ValueError(f"steps and units differ in length: {steps_a.size} != {units_a.size}")
    if n_units is None:
        n_units = int(units_a.max()) + 1 if units_a.size else 1
    n_units = _check_uint("n_units", n_units, 32, minimum=1)
    if t0 + n_steps > 1 << 64:
        raise ValueError(f"t0 + n_steps = {t0 + n_steps} overflows u64")
    if steps_a.size:
        if steps_a.min() < 0 or steps_a.max() >= n_steps:
            bad = steps_a[(steps_a < 0) | (steps_a >= n_steps)][0]
            raise ValueError(f"step offset {bad} out of range [0, n_steps={n_steps})")
        if units_a.min() < 0 or units_a.max() >= n_units:
            bad = units_a[(units_a < 0) | (units_a >= n_units)][0]
            raise ValueError(f"unit {bad} out of range [0, n_units={n_units})")
    if steps_a.size >= 1 << 32:
        raise ValueError(f"too many spikes for one batch: {steps_a.size}")
    steps_a = steps_a.astype(np.uint64)
    units_a = units_a.astype(np.uint64)
    key = (steps_a << np.uint64(32)) | units_a
    key.sort()  # repeats are kept: each is one spike
    wide = n_steps > _NARROW_LIMIT or n_units > _NARROW_LIMIT
    records = np.empty(key.size, dtype=_WIDE if wide else _NARROW)
    records["step"] = key >> np.uint64(32)
    records["unit"] = key & np.uint64(0xFFFFFFFF)
    header = SPIKE_HEADER.pack(SPIKE_MAGIC, SPIKE_VERSION, SPIKE_FLAG_WIDE if wide else 0,
                               population, n_units, n_steps, t0, key.size)
    return header + records.tobytes()


def encode_spike_raster(t0: int, raster: Any, *, population: int = 0) -> bytes:
    """Encode a dense raster ``[n_steps x n_units]`` of 0/1 (uint8 or bool) as a spike batch."""
    r = np.asarray(raster)
    if r.ndim != 2:
        raise ValueError(f"raster must be 2-D [n_steps x n_units], got shape {r.shape}")
    if r.dtype.kind not in "biu":
        raise TypeError(f"raster must be uint8 or bool, got dtype {r.dtype}")
    if r.dtype.kind != "b" and r.size and (r.min() < 0 or r.max() > 1):
        raise ValueError("raster must contain only 0 and 1")
    steps, units = np.nonzero(r)
    return encode_spike_batch(t0, r.shape[0], steps, units, n_units=r.shape[1], population=population)


def decode_spike_batch(data: bytes | bytearray | memoryview) -> SpikeBatch:
    """Decode and fully validate a binary spike batch.

    Raises
    ------
    PayloadError
        For anything malformed: not bytes, too short, wrong magic, unknown
        version or flags, zero width/steps, u64 overflow, length not matching the
        record count, step or unit out of range, records not sorted.
        No other exception escapes for any byte string.
    """
    if isinstance(data, memoryview):
        data = data.tobytes()
    if not isinstance(data, (bytes, bytearray)):
        raise PayloadError(f"spike batch must be bytes, got {type(data).__name__}")
    size = len(data)
    if size < SPIKE_HEADER.size:
        raise PayloadError(f"spike batch too short: {size} bytes, header alone is {SPIKE_HEADER.size}")
    magic, version, flags, population, n_units, n_steps, t0, n_records = SPIKE_HEADER.unpack_from(data)
    if magic != SPIKE_MAGIC:
        raise PayloadError(f"not a spike batch: magic {magic!r}, expected {SPIKE_MAGIC!r}")
    if version != SPIKE_VERSION:
        raise PayloadError(f"unsupported spike batch version {version} (this decoder reads {SPIKE_VERSION})")
    if flags & ~SPIKE_FLAG_WIDE:
        raise PayloadError(f"unknown flag bits 0x{flags & ~SPIKE_FLAG_WIDE:02x} in spike batch header")
    if n_units == 0:
        raise PayloadError("spike batch header: n_units is 0")
    if n_steps == 0:
        raise PayloadError("spike batch header: n_steps is 0")
    if t0 + n_steps > 1 << 64:
        raise PayloadError(f"spike batch header: t0 + n_steps = {t0 + n_steps} overflows u64")
    dtype = _WIDE if flags & SPIKE_FLAG_WIDE else _NARROW
    expected = SPIKE_HEADER.size + n_records * dtype.itemsize
    if size != expected:
        raise PayloadError(
            f"spike batch length mismatch: header says {n_records} records of {dtype.itemsize} bytes "
            f"({expected} bytes in all), payload has {size} bytes"
        )
    records = np.frombuffer(data, dtype=dtype, count=n_records, offset=SPIKE_HEADER.size)
    steps = records["step"].astype(np.uint32)
    units = records["unit"].astype(np.uint32)
    if n_records:
        bad = np.flatnonzero(steps >= n_steps)
        if bad.size:
            i = int(bad[0])
            raise PayloadError(f"spike record {i}: step offset {steps[i]} out of range [0, n_steps={n_steps})")
        bad = np.flatnonzero(units >= n_units)
        if bad.size:
            i = int(bad[0])
            raise PayloadError(f"spike record {i}: unit {units[i]} out of range [0, n_units={n_units})")
        key = (steps.astype(np.uint64) << np.uint64(32)) | units
        bad = np.flatnonzero(key[1:] < key[:-1])
        if bad.size:
            i = int(bad[0]) + 1
            raise PayloadError(f"spike record {i}: before record {i - 1} in (step, unit) order (unsorted)")
    return SpikeBatch(t0=t0, n_steps=n_steps, n_units=n_units, steps=steps, units=units,
                      population=population, version=version)


# ---------------------------------------------------------------------------
# JSON payloads: keyword events, metrics, control
# ---------------------------------------------------------------------------

_KEYWORD_INPUT = ("word", "score", "t_start", "t_end")
KEYWORD_FIELDS = ("word", "score", "t_start", "t_end", "model", "seq", "session")


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _keyword_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    missing = [k for k in _KEYWORD_INPUT if k not in event]
    if missing:
        raise ValueError(f"keyword event misses {', '.join(missing)}")
    word = event["word"]
    if not isinstance(word, str) or not word:
        raise ValueError(f"keyword word must be a non-empty string, got {word!r}")
    fields = {"word": word}
    for name in ("score", "t_start", "t_end"):
        fields[name] = _finite(name, event[name])
    if fields["t_start"] < 0 or fields["t_end"] < fields["t_start"]:
        raise ValueError(f"keyword times must satisfy 0 <= t_start <= t_end, got {fields['t_start']}, {fields['t_end']}")
    return fields


def encode_keyword(event: Mapping[str, Any], *, model: str, seq: int, session: str) -> bytes:
    """Encode a keyword event (``word, score, t_start, t_end``) as the ``keyword`` topic JSON."""
    if not isinstance(event, Mapping):
        raise TypeError(f"keyword event must be a mapping, got {type(event).__name__}")
    extra = set(event) - set(_KEYWORD_INPUT)
    if extra:
        raise ValueError(f"keyword event has unknown or sink-owned keys: {', '.join(sorted(map(str, extra)))}")
    doc = _keyword_fields(event)
    doc.update(model=model, seq=_check_uint("seq", seq, 63), session=session)
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def decode_keyword(payload: bytes | str) -> dict[str, Any]:
    """Parse and validate a ``keyword`` payload; raises :class:`PayloadError`."""
    doc = decode_json_object(payload, "keyword payload")
    missing = [k for k in KEYWORD_FIELDS if k not in doc]
    if missing:
        raise PayloadError(f"keyword payload misses {', '.join(missing)}")
    try:
        fields = _keyword_fields(doc)
    except ValueError as exc:
        raise PayloadError(f"keyword payload: {exc}") from None
    if not isinstance(doc["model"], str) or not isinstance(doc["session"], str):
        raise PayloadError("keyword payload: model and session must be strings")
    seq = doc["seq"]
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise PayloadError(f"keyword payload: seq must be a non-negative integer, got {seq!r}")
    return {**fields, "model": doc["model"], "seq": seq, "session": doc["session"]}


# ---------------------------------------------------------------------------
# Reconnection backoff
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter.

    ``delay(n) = min(maximum, initial * factor**(n-1)) * (1 - jitter * U)`` for
    attempt ``n >= 1`` and ``U`` uniform in [0, 1): each delay lies in
    ``[(1 - jitter) * base, base]``, so it never exceeds ``maximum``.
    """

    initial: float = 0.2
    maximum: float = 10.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"backoff needs 0 < initial <= maximum, got {self.initial}, {self.maximum}")
        if self.factor < 1:
            raise ValueError(f"backoff factor must be >= 1, got {self.factor}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"backoff jitter must be in [0, 1], got {self.jitter}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        exponent = min(max(attempt, 1) - 1, 64)
        base = min(self.maximum, self.initial * self.factor ** exponent)
        return base * (1.0 - self.jitter * (rng or random).random())


# ---------------------------------------------------------------------------
# The sink
# ---------------------------------------------------------------------------

class MqttSinkError(ConnectionError):
    """A broker connection failed in a way retrying will not fix."""


class MqttAuthError(MqttSinkError):
    """The broker refused the credentials (bad user name or password, or not authorised)."""


class MqttTlsError(MqttSinkError):
    """The TLS handshake failed, e.g. the broker certificate does not verify against the CA."""


_AUTH_CODES = {4, 5, 134, 135}  # MQTT 3.1.1 CONNACK 4/5; MQTT 5 reason codes 0x86/0x87


def _classify_connect_error(exc: BaseException, url: MqttUrl) -> Exception:
    """Map a failed connect to MqttAuthError / MqttTlsError (fatal) or leave it as is (transient)."""
    rc = getattr(exc, "rc", None)
    code = getattr(rc, "value", rc)
    if isinstance(code, int) and code in _AUTH_CODES:
        who = f"user {url.username!r}" if url.username else "anonymous client"
        return MqttAuthError(f"broker {url.host}:{url.port} refused {who}: {exc} (check user name and password)")
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text.lower():
        return MqttTlsError(f"TLS to {url.host}:{url.port} failed: {text} (check the CA file and host name)")
    if isinstance(exc, TimeoutError):
        return TimeoutError(f"connect to {url.host}:{url.port} timed out")
    return exc if isinstance(exc, Exception) else RuntimeError(text)


def _log_task_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())


@dataclasses.dataclass
class _Keyword:
    seq: int
    payload: bytes


class MqttSink:
    """Publishes keyword events, spike batches, metrics and status to one device's topics.

    ::

        async with MqttSink("mqtt://broker/lab", "pi-01", "kws-v1") as sink:
            sink.commands.register("pause", pipeline.pause)
            seq = await sink.publish_keyword({"word": "seven", "score": 0.9, "t_start": 1.2, "t_end": 1.6})
            sink.publish_spikes("input", encode_spike_raster(t0, raster))
            sink.publish_metrics({"rtf": 0.3})

    The connection lives in the sink's own task; callers never wait for the
    network. Policy (see docs/mqtt.md): keyword events go into a bounded FIFO
    (``keyword_buffer``, drop-oldest, counted in ``dropped_keywords``) and are
    removed only after the broker acknowledged them (QoS 1), so after a
    reconnection they are re-sent in order; a subscriber removes the rare
    duplicate by ``(session, seq)``. Spike batches are dropped and counted while
    disconnected or when their queue (``spike_queue``) is full. Metrics keep only
    the newest unsent snapshot. Reconnection uses :class:`Backoff`; every attempt
    is logged.

    On entry the sink waits up to ``connect_timeout`` for the first connection.
    Refused credentials (:class:`MqttAuthError`) or a TLS verification failure
    (:class:`MqttTlsError`) raise there; an unreachable broker is only logged and
    retried in the background. On exit it flushes queued messages for up to
    ``close_timeout`` seconds, publishes retained ``offline`` and disconnects.
    """

    def __init__(
        self,
        url: str | MqttUrl,
        device_id: str,
        model_name: str,
        *,
        keyword_buffer: int = 1024,
        spike_queue: int = 64,
        reply_queue: int = 64,
        command_queue: int = 16,
        commands: CommandRegistry | None = None,
        backoff: Backoff | None = None,
        connect_timeout: float = 5.0,
        publish_timeout: float = 5.0,
        close_timeout: float = 2.0,
        command_timeout: float = 10.0,
        keepalive: int = 15,
        client_id: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.url = url if isinstance(url, MqttUrl) else parse_mqtt_url(url)
        self.topics = Topics(self.url.prefix, device_id)
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
        for name, value in (("keyword_buffer", keyword_buffer), ("spike_queue", spike_queue),
                            ("reply_queue", reply_queue), ("command_queue", command_queue)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.model_name = model_name
        self.device_id = device_id
        #: Random per-sink-instance id carried in every keyword event: (session, seq) is unique.
        self.session = secrets.token_hex(8)
        self.commands = commands if commands is not None else CommandRegistry()
        if aiomqtt is None:
            raise ImportError("MqttSink needs aiomqtt>=2.5 (pip install aiomqtt)")
        self._ssl = self.url.ssl_context()  # fail early on unreadable CA/cert files
        if self.url.insecure:
            log.warning("MQTT TLS certificate and host name checks are OFF for %s: for tests only", self.url)
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self._connect_timeout = connect_timeout
        self._publish_timeout = publish_timeout
        self._close_timeout = close_timeout
        self._command_timeout = command_timeout
        self._keepalive = keepalive
        self._client_id = client_id or f"spikewire-{device_id}-{self.session[:6]}"
        self._kw_cap = keyword_buffer
        self._spike_cap = spike_queue
        self._reply_cap = reply_queue
        self._command_cap = command_queue

        self._seq = 0
        self._kw: deque[_Keyword] = deque()
        self._kw_inflight: _Keyword | None = None
        self._spikes: deque[tuple[str, bytes]] = deque()
        self._metrics: bytes | None = None
        self._replies: deque[bytes] = deque()
        self._counts = dict.fromkeys((
            "published_keywords", "published_spike_batches", "published_metrics", "published_replies",
            "dropped_keywords", "dropped_spike_batches", "dropped_metrics", "dropped_replies",
            "dropped_commands", "control_received", "control_errors", "reconnects", "connect_failures",
        ), 0)
        self._wake: asyncio.Event | None = None
        self._connected: asyncio.Event | None = None
        self._close_requested: asyncio.Event | None = None
        self._first_attempt: asyncio.Future[Exception | None] | None = None
        self._command_q: asyncio.Queue[ControlCommand] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"MqttSink({self.url.redacted()!r}, device_id={self.device_id!r}, model={self.model_name!r})"

    # -- public API ----------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected is not None and self._connected.is_set()

    def counters(self) -> dict[str, int]:
        """Counters for the metrics topic (a fresh dict; see docs/mqtt.md for each key)."""
        c = dict(self._counts)
        c["published"] = (c["published_keywords"] + c["published_spike_batches"]
                          + c["published_metrics"] + c["published_replies"])
        c["buffered"] = len(self._kw) + (self._kw_inflight is not None)
        c["spike_queue"] = len(self._spikes)
        c["connected"] = int(self.connected)
        return c

    async def publish_keyword(self, event: Mapping[str, Any]) -> int:
        """Queue a keyword event (``word, score, t_start, t_end``) for QoS-1 delivery; returns its seq.

        Returns immediately, connected or not. Raises ``ValueError``/``TypeError``
        for a malformed event (nothing is queued and no seq is used).
        """
        self._require_open()
        payload = encode_keyword(event, model=self.model_name, seq=self._seq, session=self.session)
        seq = self._seq
        self._seq += 1
        if len(self._kw) >= self._kw_cap:
            lost = self._kw.popleft()
            self._counts["dropped_keywords"] += 1
            log.warning("keyword buffer full (%d): dropped oldest event seq=%d", self._kw_cap, lost.seq)
        self._kw.append(_Keyword(seq, payload))
        self._wake.set()
        return seq

    def publish_spikes(self, population: str, batch: bytes) -> bool:
        """Queue one encoded spike batch for ``spikes/POPULATION`` (QoS 0). Never blocks.

        Returns ``False`` if it was dropped (disconnected or queue full); drops
        are counted in ``dropped_spike_batches``.
        """
        self._require_open()
        topic = self.topics.spikes(population)
        if not isinstance(batch, (bytes, bytearray, memoryview)):
            raise TypeError(f"spike batch must be bytes, got {type(batch).__name__}")
        if not self.connected or len(self._spikes) >= self._spike_cap:
            self._counts["dropped_spike_batches"] += 1
            return False
        self._spikes.append((topic, bytes(batch)))
        self._wake.set()
        return True

    def publish_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Queue a metrics snapshot (QoS 0). Never blocks; only the newest unsent one is kept.

        The sink adds ``t_wall`` (Unix time), ``session`` and ``mqtt`` (its
        :meth:`counters`); those keys must not be in ``metrics``. numpy scalars
        are converted and non-finite floats become ``null``.
        """
        self._require_open()
        if not isinstance(metrics, Mapping):
            raise TypeError(f"metrics must be a mapping, got {type(metrics).__name__}")
        clash = {"t_wall", "session", "mqtt"} & set(metrics)
        if clash:
            raise ValueError(f"metrics keys {sorted(clash)} are reserved for the sink")
        doc = json_safe(metrics)
        doc.update(t_wall=time.time(), session=self.session, mqtt=self.counters())
        if self._metrics is not None:
            self._counts["dropped_metrics"] += 1
        self._metrics = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        self._wake.set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until the sink is connected (``TimeoutError`` after ``timeout`` seconds)."""
        self._require_open()
        async with asyncio.timeout(timeout):
            await self._connected.wait()

    async def __aenter__(self) -> MqttSink:
        if self._runner is not None:
            raise RuntimeError("MqttSink can be entered only once")
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._close_requested = asyncio.Event()
        self._first_attempt = asyncio.get_running_loop().create_future()
        self._command_q = asyncio.Queue(self._command_cap)
        self._runner = asyncio.create_task(self._run(), name=f"mqtt-sink-{self.device_id}")
        self._worker = asyncio.create_task(self._command_worker(), name=f"mqtt-commands-{self.device_id}")
        for task in (self._runner, self._worker):
            task.add_done_callback(_log_task_failure)
        try:
            async with asyncio.timeout(self._connect_timeout + 1.0):
                first_error = await asyncio.shield(self._first_attempt)
        except TimeoutError:
            first_error = TimeoutError("first connect attempt still running")
        except BaseException:  # cancelled while starting: leave no orphan tasks behind
            self._closed = True
            for task in (self._runner, self._worker):
                task.cancel()
            raise
        if isinstance(first_error, MqttSinkError):
            await self._shutdown_tasks()
            self._closed = True
            raise first_error
        if first_error is not None:
            log.warning("MQTT broker %s not reachable yet (%s); buffering keyword events and retrying",
                        self.url, first_error)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Flush for up to ``close_timeout`` s, publish retained ``offline``, disconnect. Idempotent."""
        if self._closed or self._runner is None:
            self._closed = True
            return
        self._closed = True
        self._close_requested.set()
        self._wake.set()
        try:
            async with asyncio.timeout(self._close_timeout):
                await asyncio.shield(self._runner)
        except TimeoutError:
            log.warning("MQTT sink close: flush did not finish within %.1f s", self._close_timeout)
        except Exception:  # already logged by the runner
            pass
        await self._shutdown_tasks()
        left = len(self._kw) + (self._kw_inflight is not None)
        if left:
            self._counts["dropped_keywords"] += left
            log.warning("MQTT sink closed with %d undelivered keyword event(s) (counted as dropped)", left)
            self._kw.clear()
            self._kw_inflight = None
        if self._spikes:
            self._counts["dropped_spike_batches"] += len(self._spikes)
            self._spikes.clear()

    # -- internals -----------------------------------------------------------

    def _require_open(self) -> None:
        if self._runner is None:
            raise RuntimeError("use MqttSink as 'async with MqttSink(...) as sink'")
        if self._closed:
            raise RuntimeError("MqttSink is closed")

    async def _shutdown_tasks(self) -> None:
        for task in (self._runner, self._worker):
            if task is not None and not task.done():
                task.cancel()
        for task in (self._runner, self._worker):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _queue_reply(self, reply: bytes) -> None:
        if len(self._replies) >= self._reply_cap:
            self._replies.popleft()
            self._counts["dropped_replies"] += 1
        self._replies.append(reply)
        self._wake.set()

    def _make_client(self) -> Any:
        return aiomqtt.Client(
            self.url.host,
            self.url.port,
            username=self.url.username,
            password=self.url.password,
            identifier=self._client_id,
            clean_session=True,
            keepalive=self._keepalive,
            timeout=self._connect_timeout,
            tls_context=self._ssl,
            tls_insecure=True if self.url.insecure else None,
            will=aiomqtt.Will(self.topics.status, b"offline", qos=1, retain=True),
            logger=logging.getLogger(__name__ + ".client"),
        )

    @staticmethod
    def _abandon(client: Any) -> None:
        # aiomqtt leaves the socket of a failed or timed-out connect open; close it.
        paho = getattr(client, "_client", None)
        if paho is not None:
            with contextlib.suppress(Exception):
                paho.disconnect()

    async def _release(self, client: Any) -> None:
        try:
            async with asyncio.timeout(self._publish_timeout):
                await client.__aexit__(None, None, None)
        except Exception as exc:
            log.debug("MQTT disconnect: %s", exc)
            self._abandon(client)

    async def _sleep_unless_closing(self, delay: float) -> bool:
        """Sleep ``delay`` s; return True if the sink is closing with nothing left to deliver."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._close_requested.wait()
        return self._close_requested.is_set() and not self._kw

    async def _run(self) -> None:
        attempt = 0
        ever_connected = False
        while True:
            attempt += 1
            log.info("MQTT connect attempt %d to %s", attempt, self.url)
            client = self._make_client()
            try:
                async with asyncio.timeout(self._connect_timeout + 1.0):
                    await client.__aenter__()
            except asyncio.CancelledError:
                self._abandon(client)
                raise
            except Exception as exc:
                self._abandon(client)
                self._counts["connect_failures"] += 1
                error = _classify_connect_error(exc, self.url)
                if not self._first_attempt.done():
                    self._first_attempt.set_result(error)
                    if isinstance(error, MqttSinkError):
                        return
                delay = self._backoff.delay(attempt, self._rng)
                log.warning("MQTT connect attempt %d to %s failed: %s; retrying in %.2f s",
                            attempt, self.url, error, delay)
                if await self._sleep_unless_closing(delay):
                    return
                continue
            if ever_connected:
                self._counts["reconnects"] += 1
            ever_connected = True
            attempt = 0
            log.info("MQTT connected to %s as %r", self.url, self._client_id)
            self._connected.set()
            if not self._first_attempt.done():
                self._first_attempt.set_result(None)
            finished = False
            try:
                finished = await self._session(client)
            except Exception as exc:
                log.warning("MQTT connection to %s lost: %s", self.url, exc or type(exc).__name__)
            finally:
                self._connected.clear()
                if self._spikes:
                    self._counts["dropped_spike_batches"] += len(self._spikes)
                    self._spikes.clear()
                await self._release(client)
            if finished:
                log.info("MQTT sink for %s closed cleanly", self.topics.base)
                return
            # A short pause even after a good session, so a flapping broker cannot cause a busy loop.
            if await self._sleep_unless_closing(self._backoff.delay(1, self._rng)):
                return

    async def _session(self, client: Any) -> bool:
        """Run one connection; True when it ended because the sink closed, else raises."""
        await client.publish(self.topics.status, b"online", qos=1, retain=True, timeout=self._publish_timeout)
        await client.subscribe(self.topics.control, qos=1, timeout=self._publish_timeout)
        reader = asyncio.create_task(self._reader(client), name=f"mqtt-reader-{self.device_id}")
        writer = asyncio.create_task(self._writer(client), name=f"mqtt-writer-{self.device_id}")
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
        if writer in done and writer.exception() is None:
            return True
        task = writer if writer in done else reader
        exc = task.exception()
        raise exc if exc is not None else ConnectionError("MQTT reader ended")

    async def _reader(self, client: Any) -> None:
        async for message in client.messages:
            self._on_control(message)

    def _on_control(self, message: Any) -> None:
        if message.retain:
            log.warning("ignoring retained message on %s (control commands must not be retained)",
                        message.topic)
            return
        self._counts["control_received"] += 1
        payload = message.payload
        try:
            command = parse_control(payload)
            self.commands.validate(command)
        except ControlPayloadError as exc:
            self._counts["control_errors"] += 1
            log.warning("malformed control payload: %s", exc)
            self._queue_reply(encode_reply(exc.request_id, False, error=str(exc)))
            return
        except CommandError as exc:
            self._counts["control_errors"] += 1
            log.warning("rejected control command: %s", exc)
            self._queue_reply(encode_reply(command.id, False, error=str(exc)))
            return
        try:
            self._command_q.put_nowait(command)
        except asyncio.QueueFull:
            self._counts["dropped_commands"] += 1
            self._queue_reply(encode_reply(command.id, False, error=f"busy: {self._command_cap} commands pending"))

    async def _command_worker(self) -> None:
        # One at a time, in arrival order: "pause" then "resume" must not overtake each other.
        while True:
            command = await self._command_q.get()
            log.info("control command %r (id=%r)", command.cmd, command.id)
            self._queue_reply(await self.commands.execute(command, timeout=self._command_timeout))

    async def _writer(self, client: Any) -> None:
        t = self._publish_timeout
        while True:
            self._wake.clear()
            if self._replies:
                await client.publish(self.topics.control_reply, self._replies[0], qos=1, timeout=t)
                self._replies.popleft()
                self._counts["published_replies"] += 1
            elif self._kw:
                item = self._kw.popleft()
                self._kw_inflight = item
                try:
                    await client.publish(self.topics.keyword, item.payload, qos=1, timeout=t)
                except BaseException:
                    self._requeue_inflight()
                    raise
                self._kw_inflight = None
                self._counts["published_keywords"] += 1
            elif self._metrics is not None:
                payload, self._metrics = self._metrics, None
                await client.publish(self.topics.metrics, payload, qos=0, timeout=t)
                self._counts["published_metrics"] += 1
            elif self._spikes:
                topic, payload = self._spikes.popleft()
                try:
                    await client.publish(topic, payload, qos=0, timeout=t)
                except BaseException:
                    self._counts["dropped_spike_batches"] += 1
                    raise
                self._counts["published_spike_batches"] += 1
            elif self._close_requested.is_set():
                await client.publish(self.topics.status, b"offline", qos=1, retain=True, timeout=t)
                return
            else:
                await self._wake.wait()

    def _requeue_inflight(self) -> None:
        """Put an unacknowledged keyword back at the head; if the buffer is full it is the oldest: drop it."""
        item, self._kw_inflight = self._kw_inflight, None
        if item is None:
            return
        if len(self._kw) >= self._kw_cap:
            self._counts["dropped_keywords"] += 1
            log.warning("keyword buffer full (%d): dropped oldest event seq=%d", self._kw_cap, item.seq)
        else:
            self._kw.appendleft(item)
