"""The wire formats, as pure codecs (no I/O, no event loop, no MQTT client): broker URLs, topic names,
binary spike batches, keyword-event and metrics JSON, and the one parse point for JSON received from
the network (:func:`decode_json_object`).

The formats are specified in ``docs/mqtt.md``; this module is their reference implementation. The MQTT
connections (sink and spike source) live in ``runtime/mqtt.py``, the control protocol in
``runtime/control.py``; both use these codecs. Everything here works without ``aiomqtt``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import struct
from collections.abc import Mapping
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, unquote

import numpy as np

from .decision import REJECT_REASONS

__all__ = [
    "DEFAULT_PORTS",
    "KEYWORD_FIELDS",
    "POPULATION_IDS",
    "SPIKE_FLAG_WIDE",
    "SPIKE_HEADER",
    "SPIKE_MAGIC",
    "SPIKE_VERSION",
    "METRICS_RESERVED",
    "BatchLimits",
    "MqttUrl",
    "PayloadError",
    "Placement",
    "SpikeBatch",
    "SpikeTimeline",
    "Topics",
    "batch_events",
    "decode_json_object",
    "decode_keyword",
    "decode_rejected",
    "decode_spike_batch",
    "encode_keyword",
    "encode_rejected",
    "encode_metrics",
    "encode_spike_batch",
    "encode_spike_raster",
    "json_safe",
    "parse_mqtt_url",
]


class PayloadError(ValueError):
    """A received or to-be-decoded payload is malformed. The message says what and where."""


#: Limits of :func:`decode_json_object`: every JSON payload from the network (control requests,
#: keyword events) is far smaller and flatter; beyond them the payload is refused before parsing.
MAX_JSON_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32

_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]+")


def _json_depth_exceeds(data: bytes, limit: int) -> bool:
    """True when the brackets outside strings nest deeper than ``limit`` (no parsing, no recursion)."""
    brackets = _NOT_BRACKET.sub(b"", _JSON_STRING.sub(b"", data))
    depth = 0
    for b in brackets:
        if b in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _reject_json_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def decode_json_object(payload: bytes | str, what: str, error: type[PayloadError] = PayloadError, *,
                       max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH) -> dict[str, Any]:
    """The one parse point for JSON received from the network: a JSON object or ``error``.

    ``what`` names the payload in the message (e.g. "keyword payload"). Bounded before
    parsing: at most ``max_bytes`` bytes (UTF-8) and ``max_depth`` nested arrays/objects;
    NaN and Infinity (not JSON) are refused. Every failure is ``error`` with a message that
    says what, never the payload itself.
    """
    if isinstance(payload, str):
        data = payload.encode("utf-8", "surrogatepass")
    elif isinstance(payload, (bytes, bytearray, memoryview)):
        data = bytes(payload)
    else:
        raise error(f"{what} must be bytes or text, got {type(payload).__name__}")
    if len(data) > max_bytes:
        raise error(f"{what} is {len(data)} bytes, more than {max_bytes}")
    if _json_depth_exceeds(data, max_depth):
        raise error(f"{what} nests arrays/objects deeper than {max_depth}")
    try:
        doc = json.loads(data, parse_constant=_reject_json_constant)
    except RecursionError:  # cannot happen below the depth limit; kept so nothing escapes
        raise error(f"{what} nests arrays/objects too deeply") from None
    except (ValueError, TypeError) as exc:
        raise error(f"{what} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise error(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


def json_safe(obj: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays and tuples; non-finite floats become None."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"value of type {type(obj).__name__} is not JSON-serialisable")


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

    def ssl_context(self) -> Any:
        """Kept for old callers: :func:`spikewire.mqtt.tls_context` (it reads files, so it lives there)."""
        from .mqtt import tls_context

        return tls_context(self)


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
    def rejected(self) -> str:
        return f"{self.base}/rejected"

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


def decode_spike_batch(data: bytes | bytearray | memoryview, *, limits: "BatchLimits | None" = None) -> SpikeBatch:
    """Decode and fully validate a binary spike batch.

    ``limits`` (a receiver's :class:`BatchLimits`) is checked on the header, before any
    record is looked at; without it only the format's own limits apply.

    Raises
    ------
    PayloadError
        For anything malformed: not bytes, too short, wrong magic, unknown
        version or flags, zero width/steps, u64 overflow, beyond ``limits``, length
        not matching the record count, step or unit out of range, records not sorted.
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
    if limits is not None:
        limits.check(n_units, n_steps, t0, n_records)
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
# Receiving spike batches: bounds and the timeline rule (docs/mqtt.md, "Receiving spike batches")
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BatchLimits:
    """What a receiver accepts in one spike batch; a batch beyond any bound is a :class:`PayloadError`
    (the ``mqtt:`` source counts it as malformed), checked from the header before any array exists."""

    max_steps: int = 10_000      #: steps per batch (10 s at 1 ms steps)
    max_records: int = 1 << 20   #: spikes per batch (also the core's limit per step)
    max_units: int = 65536       #: header n_units (the core's SW_MAX_INPUTS)
    max_t_end: int = 1 << 53     #: t0 + n_steps (285,000 years at 1 ms; exact in a float64)

    def check(self, n_units: int, n_steps: int, t0: int, n_records: int) -> None:
        if n_steps > self.max_steps:
            raise PayloadError(f"spike batch header: n_steps {n_steps} exceeds this receiver's {self.max_steps}")
        if n_records > self.max_records:
            raise PayloadError(f"spike batch header: {n_records} records exceed this receiver's {self.max_records}")
        if n_units > self.max_units:
            raise PayloadError(f"spike batch header: n_units {n_units} exceeds this receiver's {self.max_units}")
        if t0 + n_steps > self.max_t_end:
            raise PayloadError(f"spike batch header: t0 + n_steps = {t0 + n_steps} beyond this receiver's "
                               f"{self.max_t_end}")


class Placement(NamedTuple):
    """Where a batch goes: ``accept`` it after ``gap`` empty steps, or drop it (late);
    ``resync`` names why the timeline was reset (None: it was not)."""

    accept: bool
    gap: int
    resync: str | None


class SpikeTimeline:
    """The receiving rule for one stream of spike batches, by their ``t0`` (no I/O).

    Let ``next`` be the step after the last accepted batch.

    * the first batch is accepted and sets the timeline;
    * ``t0 == next``: accepted; ``next < t0 <= next + max_gap_steps``: accepted after
      ``t0 - next`` empty steps (a short loss on the way is filled, stream time stays true);
    * ``t0 > next + max_gap_steps``: accepted, and the timeline **resyncs** to it
      (``"jump"``, no empty steps are made up);
    * ``t0 < next`` (late: a duplicate, reordered or overlapping batch): dropped, unless it is
      more than ``max_gap_steps`` behind (``"back"``: the producer restarted, or the batch
      before was a bogus jump ahead) or it is the ``resync_after``-th late batch in a row
      (``"late"``: a producer restarted recently): then it is accepted and the timeline resyncs.

    So one bad ``t0`` costs at most two resyncs and never stalls the stream; a restarted
    producer is followed at once, or after ``resync_after`` batches if it restarted less
    than ``max_gap_steps`` ago.
    """

    def __init__(self, max_gap_steps: int = 1000, resync_after: int = 8):
        if max_gap_steps < 0 or resync_after < 1:
            raise ValueError("max_gap_steps must be >= 0 and resync_after >= 1")
        self.max_gap_steps = int(max_gap_steps)
        self.resync_after = int(resync_after)
        self.next_t0: int | None = None
        self.late_run = 0

    def place(self, t0: int, n_steps: int) -> Placement:
        nxt = self.next_t0
        if nxt is None:
            p = Placement(True, 0, None)
        elif t0 >= nxt:
            gap = t0 - nxt
            p = Placement(True, gap, None) if gap <= self.max_gap_steps else Placement(True, 0, "jump")
        elif nxt - t0 > self.max_gap_steps:
            p = Placement(True, 0, "back")
        elif self.late_run + 1 >= self.resync_after:
            p = Placement(True, 0, "late")
        else:
            self.late_run += 1
            return Placement(False, 0, None)
        self.late_run = 0
        self.next_t0 = t0 + n_steps
        return p


def batch_events(batch: SpikeBatch, gap: int = 0) -> "tuple[np.ndarray, np.ndarray]":
    """CSR ``(indptr, channels)`` of ``gap`` empty steps followed by the batch's steps
    (allocates ``gap + n_steps + 1`` indices: bound both first)."""
    T = gap + batch.n_steps
    counts = np.bincount(batch.steps.astype(np.int64) + gap, minlength=T)
    indptr = np.zeros(T + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    return indptr, batch.units.astype(np.int32)


# ---------------------------------------------------------------------------
# JSON payloads: keyword events and metrics
# ---------------------------------------------------------------------------

_KEYWORD_INPUT = ("word", "score", "t_start", "t_end")
KEYWORD_FIELDS = ("word", "score", "t_start", "t_end", "model", "seq", "session")  #: required; ``stretch`` optional
#: Stretch ids are below 2**53 (exact in every JSON reader).
STRETCH_ID_BITS = 53
REJECTED_FIELDS = ("stretch", "best", "score", "t_start", "t_end", "reason", "session")


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
        raise ValueError(f"keyword word must be a non-empty string, got {word!r:.60}")
    fields = {"word": word}
    for name in ("score", "t_start", "t_end"):
        fields[name] = _finite(name, event[name])
    if fields["t_start"] < 0 or fields["t_end"] < fields["t_start"]:
        raise ValueError(f"keyword times must satisfy 0 <= t_start <= t_end, got {fields['t_start']}, {fields['t_end']}")
    if event.get("stretch") is not None:
        fields["stretch"] = _stretch_id(event["stretch"])
    return fields


def _stretch_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < 1 << STRETCH_ID_BITS:
        raise ValueError(f"stretch must be an integer in 0..2**{STRETCH_ID_BITS}-1, got {value!r:.40}")
    return int(value)


def encode_keyword(event: Mapping[str, Any], *, model: str, seq: int, session: str) -> bytes:
    """Encode a keyword event (``word, score, t_start, t_end`` and optionally ``stretch``, the id of its
    stretch of evidence) as the ``keyword`` topic JSON."""
    if not isinstance(event, Mapping):
        raise TypeError(f"keyword event must be a mapping, got {type(event).__name__}")
    extra = set(event) - set(_KEYWORD_INPUT) - {"stretch"}
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
        raise PayloadError(f"keyword payload: seq must be a non-negative integer, got {seq!r:.40}")
    return {**fields, "model": doc["model"], "seq": seq, "session": doc["session"]}




def _rejected_fields(event: Mapping[str, Any]) -> dict[str, Any]:
    missing = [k for k in REJECTED_FIELDS[:-1] if k not in event]
    if missing:
        raise ValueError(f"rejected stretch misses {', '.join(missing)}")
    best = event["best"]
    if not isinstance(best, str) or not best or len(best) > 256:
        raise ValueError(f"rejected best must be a word (a non-empty string), got {best!r:.40}")
    if event["reason"] not in REJECT_REASONS:
        raise ValueError(f"rejected reason must be one of {', '.join(REJECT_REASONS)}, got {event['reason']!r:.40}")
    doc = {"stretch": _stretch_id(event["stretch"]), "best": best}
    for name in ("score", "t_start", "t_end"):
        doc[name] = _finite(name, event[name])
    if doc["t_start"] < 0 or doc["t_end"] < doc["t_start"]:
        raise ValueError(f"rejected times must satisfy 0 <= t_start <= t_end, got {doc['t_start']}, {doc['t_end']}")
    doc["reason"] = event["reason"]
    return doc


def encode_rejected(event: Mapping[str, Any], *, model: str, session: str) -> bytes:
    """The ``rejected`` topic JSON of a stretch that fired no keyword (``stretch, best, score, t_start,
    t_end, reason``) plus ``model`` and ``session``."""
    if not isinstance(event, Mapping):
        raise TypeError(f"rejected stretch must be a mapping, got {type(event).__name__}")
    extra = set(event) - set(REJECTED_FIELDS[:-1])
    if extra:
        raise ValueError(f"rejected stretch has unknown or sink-owned keys: {', '.join(sorted(map(str, extra)))}")
    doc = _rejected_fields(event)
    doc.update(model=model, session=session)
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def decode_rejected(payload: bytes | str) -> dict[str, Any]:
    """Parse and validate a ``rejected`` payload (bounded like every network JSON); raises :class:`PayloadError`."""
    doc = decode_json_object(payload, "rejected payload")
    try:
        fields = _rejected_fields(doc)
    except ValueError as exc:
        raise PayloadError(f"rejected payload: {exc}") from None
    if not isinstance(doc.get("model"), str) or not isinstance(doc.get("session"), str):
        raise PayloadError("rejected payload: model and session must be strings")
    return {**fields, "model": doc["model"], "session": doc["session"]}


METRICS_RESERVED = ("t_wall", "session", "mqtt")  #: keys the sink adds to every metrics snapshot


def encode_metrics(metrics: Mapping[str, Any], *, t_wall: float, session: str,
                   mqtt: Mapping[str, Any]) -> bytes:
    """The ``metrics`` topic JSON: ``metrics`` plus ``t_wall`` (Unix time), ``session`` and ``mqtt`` (counters).

    numpy scalars and arrays become plain JSON, non-finite floats ``null``. Raises ``TypeError`` for a
    non-mapping or a value JSON cannot hold, ``ValueError`` if ``metrics`` uses a reserved key.
    """
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping, got {type(metrics).__name__}")
    clash = set(METRICS_RESERVED) & set(metrics)
    if clash:
        raise ValueError(f"metrics keys {sorted(clash)} are reserved for the sink")
    doc = json_safe(metrics)
    doc.update(t_wall=t_wall, session=session, mqtt=json_safe(mqtt))
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
