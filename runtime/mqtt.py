"""MQTT connections: the async :class:`MqttSink` (keyword events, spike batches, metrics, status, control)
and :class:`MqttSpikeSource` (``--source mqtt:TOPIC``), sharing one reconnect loop (:class:`Reconnector`,
:class:`Backoff`) and one rule for fatal errors (:class:`MqttFatalError`).

The wire protocol (topics, JSON schemas, the binary spike-batch layout, control
commands, buffering and reconnection policy) is specified in ``docs/mqtt.md``.
The pure codecs (``MqttUrl``, ``parse_mqtt_url``, ``Topics``, spike batches,
keyword and metrics JSON) live in ``runtime/wire.py``, the control protocol
(``ControlCommand``, ``parse_control``, ``encode_reply``, ``CommandRegistry``) in
``runtime/control.py``; both are re-exported here, so ``spikewire.mqtt.X`` keeps working.

All ``MqttSink`` methods must be called from the event loop thread that
entered it. ``aiomqtt`` is imported lazily, so the codecs work without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import random
import secrets
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .control import (  # noqa: F401  (re-exported for old imports)
    ArgType,
    CommandError,
    CommandRegistry,
    CommandSpec,
    ControlChannel,
    ControlCommand,
    ControlPayloadError,
    encode_reply,
    parse_control,
)
from .credentials import with_password
from .ratelog import RateLimitedLog
from .safefile import check_regular
from .events import Events
from .hass import Discovery, check_device_id, discovery_messages
from .sources import Emitter, Source, SourceError, SpikeBlock

# The codecs moved to wire.py and the control protocol to control.py; re-exported for old imports.
from .wire import (  # noqa: F401
    DEFAULT_PORTS,
    KEYWORD_FIELDS,
    METRICS_RESERVED,
    POPULATION_IDS,
    SPIKE_FLAG_WIDE,
    SPIKE_HEADER,
    SPIKE_MAGIC,
    SPIKE_VERSION,
    BatchLimits,
    MqttUrl,
    PayloadError,
    Placement,
    SpikeBatch,
    SpikeTimeline,
    Topics,
    batch_events,
    decode_json_object,
    decode_keyword,
    decode_rejected,
    decode_spike_batch,
    encode_keyword,
    encode_rejected,
    encode_metrics,
    encode_spike_batch,
    encode_spike_raster,
    json_safe,
    parse_mqtt_url,
)
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
    "ArgType",
    "Backoff",
    "CommandError",
    "CommandRegistry",
    "CommandSpec",
    "ControlPayloadError",
    "KEYWORD_FIELDS",
    "ControlCommand",
    "MqttAuthError",
    "MqttSink",
    "MqttFatalError",
    "MqttSinkError",
    "MqttSpikeSource",
    "Reconnector",
    "classify_connect_error",
    "MqttTlsError",
    "MqttUrl",
    "PayloadError",
    "SpikeBatch",
    "Topics",
    "decode_keyword",
    "decode_rejected",
    "decode_spike_batch",
    "encode_keyword",
    "encode_rejected",
    "encode_metrics",
    "encode_reply",
    "encode_spike_batch",
    "encode_spike_raster",
    "json_safe",
    "parse_control",
    "parse_mqtt_url",
    "tls_context",
]

log = logging.getLogger(__name__)

#: CA bundles are < 1 MB (Debian's whole bundle is ~200 kB); larger files are not TLS material.
MAX_TLS_FILE_BYTES = 16 << 20


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
        values = (self.initial, self.maximum, self.factor, self.jitter)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise ValueError(f"backoff values must be finite numbers, got {values!r:.80}")
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
# Errors, TLS and the one reconnect loop (shared by MqttSink and MqttSpikeSource)
# ---------------------------------------------------------------------------

class MqttFatalError(ConnectionError):
    """A broker connection failed in a way retrying will not fix (credentials, TLS)."""


#: The old name (the sink was the only client); the same class.
MqttSinkError = MqttFatalError


class MqttAuthError(MqttFatalError):
    """The broker refused the credentials (bad user name or password, or not authorised)."""


class MqttTlsError(MqttFatalError):
    """TLS cannot work: the CA/certificate files do not load, or the broker certificate does not verify."""


def tls_context(url: MqttUrl) -> ssl.SSLContext | None:
    """A client TLS context for an ``mqtts`` URL, ``None`` for plain ``mqtt``.

    Raises :class:`MqttTlsError` naming the file if the CA, certificate or key cannot be loaded.
    """
    if not url.tls:
        return None
    # ssl reads these by name: a FIFO or a device would block or never end, so regular files only
    for what, f in (("CA file", url.ca_file), ("client certificate", url.cert_file), ("key", url.key_file)):
        if f is not None:
            try:
                check_regular(f, MAX_TLS_FILE_BYTES)
            except OSError as exc:
                raise MqttTlsError(f"MQTT TLS: cannot load {what} {f!r}: {exc.strerror or exc}") from None
    try:
        ctx = ssl.create_default_context(cafile=url.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise MqttTlsError(f"MQTT TLS: cannot load CA file {url.ca_file!r}: {exc}") from None
    if url.cert_file:
        try:
            ctx.load_cert_chain(url.cert_file, url.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise MqttTlsError(
                f"MQTT TLS: cannot load client certificate {url.cert_file!r} / key {url.key_file!r}: {exc}"
            ) from None
    if url.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


_AUTH_CODES = {4, 5, 134, 135}  # MQTT 3.1.1 CONNACK 4/5; MQTT 5 reason codes 0x86/0x87


def classify_connect_error(exc: BaseException, url: MqttUrl) -> Exception:
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


def _abandon(client: Any) -> None:
    """aiomqtt leaves the socket of a failed or timed-out connect open; close it."""
    paho = getattr(client, "_client", None)
    if paho is not None:
        with contextlib.suppress(Exception):
            paho.disconnect()


class Inbox(asyncio.Queue):
    """aiomqtt's queue of received messages, bounded in messages and in payload bytes.

    aiomqtt reads the socket as fast as the broker sends and keeps every message until it is
    consumed; unbounded, a publisher faster than the pipeline grew the process without limit (a
    flood of 18,000 messages a second took one from 44 to 177 MB in 20 s). Here, when a new message
    would exceed ``maxsize`` messages or ``max_bytes`` bytes, the oldest ones are dropped and counted in
    ``counts[key]`` (the newest is what a real-time consumer wants). aiomqtt makes it with
    ``queue_type(maxsize=max_queued_incoming_messages)``; bind ``max_bytes`` and ``counts`` with
    :func:`functools.partial`.
    """

    def __init__(self, maxsize: int = 0, *, max_bytes: int, counts: dict[str, int], key: str = "dropped_messages"):
        super().__init__(maxsize)
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._counts = counts
        self._key = key
        counts.setdefault(key, 0)

    @staticmethod
    def _size(item: Any) -> int:
        payload = getattr(item, "payload", b"")
        return len(payload) if isinstance(payload, (bytes, bytearray, str)) else 8

    def _put(self, item: Any) -> None:
        super()._put(item)
        self.nbytes += self._size(item)

    def _get(self) -> Any:
        item = super()._get()
        self.nbytes -= self._size(item)
        return item

    def put_nowait(self, item: Any) -> None:
        size = self._size(item)
        while not self.empty() and (self.full() or self.nbytes + size > self.max_bytes):
            self.get_nowait()
            self._counts[self._key] += 1
        if size > self.max_bytes:
            self._counts[self._key] += 1
            return
        super().put_nowait(item)


#: Received messages a client holds before the oldest are dropped (control: requests; source: batches).
INBOX_MESSAGES = {"control": 256, "spikes": 1024}
INBOX_BYTES = 32 << 20


class Reconnector:
    """The one connect-and-retry loop of every MQTT client here (:class:`MqttSink`, :class:`MqttSpikeSource`).

    :meth:`run` connects a fresh client from ``make_client()``, runs ``await session(client)``
    and, when the session raises (connection lost), disconnects and connects again. Attempt
    *n* of a run of failures waits ``backoff.delay(n)``; after a lost session the first retry
    waits one jittered initial delay, so a flapping broker cannot cause a busy loop. Every
    attempt and failure is logged with the password redacted.

    A fatal error (:class:`MqttFatalError`: refused credentials, TLS) on the very first
    attempt is raised: retrying cannot fix a wrong password or CA, and the caller is still
    starting, so it can fail loudly. A fatal error on a later attempt (a broker being
    restarted or reconfigured may refuse for a while) is logged and retried like any other.

    Warnings (a failed attempt, a lost connection) are rate-limited: at most one per
    ``log_interval`` seconds; the others go to the debug log and are counted, and the next
    warning says how many were left out (a broker that stays down must not flood the log).

    ``counts`` gets ``connect_failures`` (failed attempts), ``reconnects`` (successful
    connections after the first) and ``suppressed_warnings``; pass the owner's counter dict
    to have them there.
    """

    def __init__(self, url: MqttUrl, make_client: Callable[[], Any], *, what: str,
                 backoff: Backoff | None = None, rng: random.Random | None = None,
                 connect_timeout: float = 5.0, release_timeout: float = 5.0,
                 counts: dict[str, int] | None = None, log_interval: float = 1.0) -> None:
        self.url = url
        self.what = what
        self._make_client = make_client
        self.backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self._connect_timeout = connect_timeout
        self._release_timeout = release_timeout
        self.counts = counts if counts is not None else {}
        for key in ("connect_failures", "reconnects"):
            self.counts.setdefault(key, 0)
        self._warnings = RateLimitedLog(log, interval=log_interval, counts=self.counts)

    def _warn(self, msg: str, *args: Any) -> None:
        self._warnings.warning(msg, *args)

    async def run(
        self,
        session: Callable[[Any], Awaitable[bool]],
        *,
        wait: Callable[[float], Awaitable[bool]] | None = None,
        first: asyncio.Future[Exception | None] | None = None,
        on_disconnect: Callable[[], None] | None = None,
    ) -> None:
        """Connect and run sessions until one returns True (finished) or ``wait`` says stop.

        ``wait(delay)`` sleeps between attempts and returns True to stop (default: just sleep).
        ``first`` gets the outcome of the first attempt (``None`` if connected, else the error).
        ``on_disconnect()`` runs after every connected session, before the client is released.
        Raises the :class:`MqttFatalError` of a refused first attempt.
        """
        attempt = 0
        tries = 0
        ever_connected = False
        while True:
            attempt += 1
            tries += 1
            log.info("%s: MQTT connect attempt %d to %s", self.what, attempt, self.url)
            client = self._make_client()
            try:
                async with asyncio.timeout(self._connect_timeout + 1.0):
                    await client.__aenter__()
            except asyncio.CancelledError:
                _abandon(client)
                raise
            except Exception as exc:
                _abandon(client)
                self.counts["connect_failures"] += 1
                error = classify_connect_error(exc, self.url)
                if first is not None and not first.done():
                    first.set_result(error)
                if isinstance(error, MqttFatalError) and tries == 1:
                    log.error("%s: MQTT connect to %s failed: %s (not retrying)", self.what, self.url, error)
                    raise error
                delay = self.backoff.delay(attempt, self._rng)
                self._warn("%s: MQTT connect attempt %d to %s failed: %s; retrying in %.2f s",
                           self.what, attempt, self.url, error, delay)
                if await self._wait(wait, delay):
                    return
                continue
            if ever_connected:
                self.counts["reconnects"] += 1
            ever_connected = True
            attempt = 0
            log.info("%s: MQTT connected to %s", self.what, self.url)
            if first is not None and not first.done():
                first.set_result(None)
            finished = False
            try:
                finished = await session(client)
            except Exception as exc:
                self._warn("%s: MQTT connection to %s lost: %s", self.what, self.url, exc or type(exc).__name__)
            finally:
                if on_disconnect is not None:
                    on_disconnect()
                await self._release(client)
            if finished:
                return
            if await self._wait(wait, self.backoff.delay(1, self._rng)):
                return

    @staticmethod
    async def _wait(wait: Callable[[float], Awaitable[bool]] | None, delay: float) -> bool:
        if wait is not None:
            return await wait(delay)
        await asyncio.sleep(delay)
        return False

    async def _release(self, client: Any) -> None:
        try:
            async with asyncio.timeout(self._release_timeout):
                await client.__aexit__(None, None, None)
        except Exception as exc:
            log.debug("MQTT disconnect: %s", exc)
            _abandon(client)


# ---------------------------------------------------------------------------
# The sink
# ---------------------------------------------------------------------------

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
        rejected_queue: int = 64,
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
        control: bool = True,
        homeassistant: Discovery | Mapping[str, Any] | None = None,
        vocabulary: Sequence[str] = (),
    ) -> None:
        self.url = url if isinstance(url, MqttUrl) else parse_mqtt_url(url)
        self.topics = Topics(self.url.prefix, device_id)
        #: Home Assistant discovery (runtime/hass.py): None = publish nothing under the HA prefix
        self.homeassistant = Discovery.from_options(homeassistant)
        if self.homeassistant is not None:
            check_device_id(device_id)
        self.vocabulary = list(vocabulary)
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be a non-empty string, got {model_name!r}")
        for name, value in (("keyword_buffer", keyword_buffer), ("spike_queue", spike_queue),
                            ("reply_queue", reply_queue), ("rejected_queue", rejected_queue),
                            ("command_queue", command_queue)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.model_name = model_name
        self.device_id = device_id
        #: False: ``control`` is not subscribed (``[control] enabled = false``): nothing is read or answered.
        self.control_enabled = bool(control)
        #: Random per-sink-instance id carried in every keyword event: (session, seq) is unique.
        self.session = secrets.token_hex(8)
        self.commands = commands if commands is not None else CommandRegistry()
        if aiomqtt is None:
            raise ImportError("MqttSink needs aiomqtt>=2.5 (pip install aiomqtt)")
        self._ssl = tls_context(self.url)  # fail early on unreadable CA/cert files
        if self.url.insecure:
            log.warning("MQTT TLS certificate and host name checks are OFF for %s: for tests only", self.url)
        self._connect_timeout = connect_timeout
        self._publish_timeout = publish_timeout
        self._close_timeout = close_timeout
        self._keepalive = keepalive
        self._client_id = client_id or f"spikewire-{device_id}-{self.session[:6]}"
        self._kw_cap = keyword_buffer
        self._spike_cap = spike_queue
        self._reply_cap = reply_queue
        self._rej_cap = rejected_queue

        self._seq = 0
        self._kw: deque[_Keyword] = deque()
        self._kw_inflight: _Keyword | None = None
        self._spikes: deque[tuple[str, bytes]] = deque()
        self._metrics: bytes | None = None
        self._replies: deque[bytes] = deque()
        self._rejected: deque[bytes] = deque()
        self._counts = dict.fromkeys((
            "published_keywords", "published_spike_batches", "published_metrics", "published_replies",
            "published_rejected", "dropped_keywords", "dropped_spike_batches", "dropped_metrics", "dropped_replies",
            "dropped_rejected", "dropped_commands", "dropped_messages", "control_received", "control_errors",
            "ignored_retained", "reconnects",
            "connect_failures", "suppressed_warnings",
        ), 0)
        self._control = ControlChannel(self.commands, self._queue_reply, name=f"mqtt {self.topics.control}",
                                       queue=command_queue, timeout=command_timeout, counts=self._counts)
        self._reconnector = Reconnector(self.url, self._make_client, what=f"sink {device_id}",
                                        backoff=backoff, rng=rng, connect_timeout=connect_timeout,
                                        release_timeout=publish_timeout, counts=self._counts)
        self._wake: asyncio.Event | None = None
        self._connected: asyncio.Event | None = None
        self._close_requested: asyncio.Event | None = None
        self._first_attempt: asyncio.Future[Exception | None] | None = None
        self._runner: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._discovery_pending = False

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
                          + c["published_metrics"] + c["published_replies"] + c["published_rejected"])
        c["buffered"] = len(self._kw) + (self._kw_inflight is not None)
        c["spike_queue"] = len(self._spikes)
        c["connected"] = int(self.connected)
        return c

    def set_model(self, name: str, vocabulary: Sequence[str] | None = None) -> None:
        """A new model (reload): its name goes into every keyword from now on; with Home Assistant
        discovery on, a changed name or vocabulary is announced again (the event types)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"model_name must be a non-empty string, got {name!r}")
        words = self.vocabulary if vocabulary is None else list(vocabulary)
        changed = (name, words) != (self.model_name, self.vocabulary)
        self.model_name, self.vocabulary = name, words
        if changed and self.homeassistant is not None and self.homeassistant.discovery:
            self._discovery_pending = True
            if self._wake is not None:
                self._wake.set()

    def discovery_messages(self) -> list[tuple[str, bytes]]:
        """The retained Home Assistant discovery messages published on every connection (none if off)."""
        if self.homeassistant is None:
            return []
        from . import __version__
        return discovery_messages(self.homeassistant, self.topics, model=self.model_name,
                                  vocabulary=self.vocabulary, version=__version__)

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

    def publish_rejected(self, event: Mapping[str, Any]) -> None:
        """Queue a rejected stretch (``stretch, best, score, t_start, t_end, reason``) for the ``rejected``
        topic (QoS 1). Never blocks; a queue of ``rejected_queue``: when full the oldest is dropped and
        counted in ``dropped_rejected``. Kept across a reconnection, like control replies."""
        self._require_open()
        payload = encode_rejected(event, model=self.model_name, session=self.session)
        if len(self._rejected) >= self._rej_cap:
            self._rejected.popleft()
            self._counts["dropped_rejected"] += 1
        self._rejected.append(payload)
        self._wake.set()

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
        payload = encode_metrics(metrics, t_wall=time.time(), session=self.session, mqtt=self.counters())
        if self._metrics is not None:
            self._counts["dropped_metrics"] += 1
        self._metrics = payload
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
        self._runner = asyncio.create_task(self._run(), name=f"mqtt-sink-{self.device_id}")
        self._worker = asyncio.create_task(self._control.run(), name=f"mqtt-commands-{self.device_id}")
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
        if isinstance(first_error, MqttFatalError):
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
        if self._rejected:
            self._counts["dropped_rejected"] += len(self._rejected)
            self._rejected.clear()

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
            queue_type=functools.partial(Inbox, max_bytes=INBOX_BYTES, counts=self._counts),
            max_queued_incoming_messages=INBOX_MESSAGES["control"],
        )

    async def _sleep_unless_closing(self, delay: float) -> bool:
        """The wait between connect attempts: True (stop) if the sink is closing with nothing left to
        deliver. A close request ends the wait early once (a last chance to flush); while closing, every
        further wait is the full backoff delay (``aclose`` bounds the whole flush by ``close_timeout``),
        so a broker that never comes up is not hammered with attempts."""
        if self._close_requested.is_set():
            if not self._kw:
                return True
            await asyncio.sleep(delay)
            return False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._close_requested.wait()
        return self._close_requested.is_set() and not self._kw

    async def _run(self) -> None:
        def disconnected() -> None:
            self._connected.clear()
            if self._spikes:
                self._counts["dropped_spike_batches"] += len(self._spikes)
                self._spikes.clear()

        async def session(client: Any) -> bool:
            log.info("MQTT sink %s connected as %r", self.topics.base, self._client_id)
            self._connected.set()
            finished = await self._session(client)
            if finished:
                log.info("MQTT sink for %s closed cleanly", self.topics.base)
            return finished

        with contextlib.suppress(MqttFatalError):  # already reported through _first_attempt
            await self._reconnector.run(session, wait=self._sleep_unless_closing, first=self._first_attempt,
                                        on_disconnect=disconnected)

    async def _session(self, client: Any) -> bool:
        """Run one connection; True when it ended because the sink closed, else raises."""
        self._discovery_pending = False
        await self._publish_discovery(client)
        await client.publish(self.topics.status, b"online", qos=1, retain=True, timeout=self._publish_timeout)
        if self.control_enabled:
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

    async def _publish_discovery(self, client: Any) -> None:
        for topic, payload in self.discovery_messages():  # retained: HA finds them after its own restart
            await client.publish(topic, payload, qos=1, retain=True, timeout=self._publish_timeout)

    async def _reader(self, client: Any) -> None:
        async for message in client.messages:
            self._on_control(message)

    def _on_control(self, message: Any) -> None:
        if not self.control_enabled:
            return
        if message.retain:  # a retained command would run again at every connection of every device
            self._counts["ignored_retained"] += 1
            log.warning("ignoring retained message on %s (control commands must not be retained)",
                        message.topic)
            return
        self._control.submit(message.payload)

    async def _writer(self, client: Any) -> None:
        t = self._publish_timeout
        while True:
            self._wake.clear()
            if self._discovery_pending:
                self._discovery_pending = False
                await self._publish_discovery(client)
            elif self._replies:
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
            elif self._rejected:
                await client.publish(self.topics.rejected, self._rejected[0], qos=1, timeout=t)
                self._rejected.popleft()
                self._counts["published_rejected"] += 1
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


# ---------------------------------------------------------------------------
# The spike source (``--source mqtt:TOPIC``)
# ---------------------------------------------------------------------------

class MqttSpikeSource(Source):
    """Spike batches (docs/mqtt.md binary layout) from an MQTT topic, straight to the core.

    Each valid batch becomes ``n_steps`` core steps.  Every payload is bounded by ``limits``
    (:class:`~spikewire.wire.BatchLimits`) before anything is allocated; malformed or
    oversized payloads (``PayloadError``), unit ids ``>= n_in`` and late batches are
    counted and logged (at most one warning a second), never raised.  Where a batch goes
    in time is the receiving rule of :class:`~spikewire.wire.SpikeTimeline`
    (docs/mqtt.md, "Receiving spike batches"): a forward jump of at most
    ``max_gap_steps`` is filled with empty steps, a larger jump, a batch far behind or
    ``resync_after`` late batches in a row resync (counted in ``resyncs``).
    Live: drop-oldest when the pipeline is behind.
    """

    kind = "spikes"
    live = True

    def __init__(self, topic: str, url: str | MqttUrl | None, *, n_in: int | None = None,
                 max_gap_steps: int = 1000, resync_after: int = 8, limits: BatchLimits | None = None,
                 spec: str | None = None, backoff: Backoff | None = None):
        super().__init__(spec or f"mqtt:{topic}")
        if not topic or any(c in topic for c in "+#\0"):
            raise SourceError(f"mqtt source: topic must be a non-empty topic without wildcards, got {topic!r}")
        if url is None:
            raise SourceError("mqtt source needs a broker: pass --broker mqtt://HOST[:PORT] "
                              "(or an mqtt:// sink whose broker is used)")
        try:
            # a URL without a password may take it from SPIKEWIRE_MQTT_PASSWORD
            self.url = with_password(parse_mqtt_url(url)) if isinstance(url, str) else url
        except ValueError as e:
            raise SourceError(f"mqtt source: bad broker URL: {e}") from None
        try:
            self._ssl = tls_context(self.url)  # unreadable CA/cert files fail here, before the pipeline starts
        except MqttTlsError as e:
            raise SourceError(f"mqtt source: {e}") from None
        if aiomqtt is None:
            raise SourceError("mqtt source needs aiomqtt>=2.5 (pip install aiomqtt)")
        self.backoff = backoff
        self.topic = topic
        self.n_in = n_in
        self.limits = limits or BatchLimits()
        self.timeline = SpikeTimeline(max_gap_steps, resync_after)
        self.subscribed: asyncio.Event | None = None
        self.counters = {"batches": 0, "steps": 0, "events": 0, "malformed": 0, "bad_units": 0,
                         "late": 0, "gap_steps": 0, "resyncs": 0, "dropped_messages": 0, "reconnects": 0,
                         "connect_failures": 0, "suppressed_warnings": 0}
        self._last_warn = 0.0

    @property
    def max_gap_steps(self) -> int:
        return self.timeline.max_gap_steps

    async def __aenter__(self) -> "MqttSpikeSource":
        self.subscribed = asyncio.Event()
        return self

    def _warn(self, msg: str, *args, level: int = logging.WARNING) -> None:
        now = time.monotonic()
        if now - self._last_warn > 1.0:  # at most one message per second; the counters have the rest
            self._last_warn = now
            log.log(level, "mqtt source %s: " + msg, self.topic, *args)

    def handle_payload(self, payload: bytes) -> SpikeBlock | None:
        """Validate and place one payload; returns the block to feed or None (counted)."""
        try:
            b = decode_spike_batch(payload, limits=self.limits)
        except PayloadError as e:
            self.counters["malformed"] += 1
            self._warn("malformed spike batch dropped (%s)", e)
            return None
        if self.n_in is not None and b.units.size and int(b.units.max()) >= self.n_in:
            self.counters["bad_units"] += 1
            self._warn("spike batch dropped: unit %d >= the core's n_in=%d", int(b.units.max()), self.n_in)
            return None
        expected = self.timeline.next_t0
        p: Placement = self.timeline.place(b.t0, b.n_steps)
        if not p.accept:
            self.counters["late"] += 1
            self._warn("spike batch at t0=%d dropped: older than the next expected step %d", b.t0, expected)
            return None
        if p.resync is not None:
            self.counters["resyncs"] += 1
            self._warn("resynchronised to t0=%d (%s; the next expected step was %d)", b.t0,
                       {"jump": "jump ahead", "back": "far behind", "late": "late batches in a row"}[p.resync],
                       expected, level=logging.INFO)
        indptr, units = batch_events(b, p.gap)
        T = p.gap + b.n_steps
        self.counters["batches"] += 1
        self.counters["steps"] += T
        self.counters["gap_steps"] += p.gap
        self.counters["events"] += int(units.size)
        return SpikeBlock(Events(indptr, units), b.t0 - p.gap, time.monotonic())

    def _make_client(self) -> Any:
        return aiomqtt.Client(self.url.host, self.url.port, username=self.url.username,
                              password=self.url.password, tls_context=self._ssl,
                              tls_insecure=True if self.url.insecure else None,
                              timeout=5, keepalive=15, logger=logging.getLogger(__name__ + ".client"),
                              queue_type=functools.partial(Inbox, max_bytes=INBOX_BYTES, counts=self.counters),
                              max_queued_incoming_messages=INBOX_MESSAGES["spikes"])

    async def run(self, emit: Emitter) -> None:
        """Subscribe and feed batches until cancelled; reconnects like the sink (:class:`Reconnector`).

        Refused credentials or a failed TLS check on the first attempt raise
        :class:`MqttAuthError` / :class:`MqttTlsError` (the pipeline fails; retrying cannot help).
        """

        async def session(client: Any) -> bool:
            await client.subscribe(self.topic, qos=0)
            log.info("mqtt source: subscribed to %s on %s", self.topic, self.url)
            self.subscribed.set()
            async for msg in client.messages:
                blk = self.handle_payload(bytes(msg.payload))
                if blk is not None:
                    emit.put_nowait(blk)
            raise ConnectionError("the message stream ended")

        reconnector = Reconnector(self.url, self._make_client, what=f"source {self.spec}",
                                  backoff=self.backoff, counts=self.counters)
        await reconnector.run(session, on_disconnect=self.subscribed.clear)
