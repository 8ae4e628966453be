"""Output sinks of the streaming runtime (``spikewire run --sink SPEC``, repeatable).

==========================  ===================================================
spec                        what it does
==========================  ===================================================
``stdout``                  one JSON object per line per keyword event
                            ``{word, score, t_start, t_end, stretch, model, seq}``;
                            with ``spikes=True`` also spike lines, with
                            ``Pipeline(rejected=True)`` rejected-stretch lines
``mqtt://...``/``mqtts://``  :class:`spikewire.mqtt.MqttSink`: keyword, spikes/input,
                            spikes/hidden (one message per block), status,
                            metrics, control (docs/mqtt.md)
``file:PATH``               records the session's spike stream (input events and
                            hidden spikes with step indices) in the ``SWSF``
                            format below; read it back with :func:`read_spike_file`
==========================  ===================================================

Every sink gets its items from its own bounded queue filled by the pipeline's
decision stage (see runtime/pipeline.py for the overflow policy).

``SWSF`` spike file, version 1 (all integers little-endian)::

    file    = b"SWSF" u8 version=1 u8 0 u16 0  frame*
    frame   = u8 type  u8 0  u16 0  u32 length  payload[length]
    type 1  JSON object (UTF-8): {"event": "header", ...} first, then
            {"event": "model", ...} at every model (re)load and {"event": "end", ...} last
    type 2  block: "<QIIIII" t0, n_steps, n_in, n_hid, n_input, n_hidden, then
            n_input  x (u32 step offset, u32 input channel) in step order; a channel
                       repeated within a step = that many input events
            n_hidden x (u32 step offset, u32 hidden unit), sorted
            Spike i happened at absolute core step t0 + offset.

A file cut short (crash, power loss) reads back up to its last whole frame
(``SpikeRecording.truncated``).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .events import Events

log = logging.getLogger(__name__)

__all__ = ["KeywordItem", "SpikeItem", "Sink", "StdoutSink", "MqttOut", "FileSink", "SinkError",
           "SpikeRecording", "read_spike_file", "parse_sink", "SINK_SPECS"]

SINK_SPECS = "stdout, mqtt://[user[:pw]@]HOST[:PORT]/PREFIX, mqtts://..., file:PATH"


#: Held while a whole line goes to stdout (the stdout sink, the CLI's command replies): lines never interleave.
STDOUT_LOCK = threading.Lock()


class SinkError(ValueError):
    """A sink spec or its target is unusable; the message says why."""


@dataclass
class KeywordItem:
    """A keyword event as published (``event``) plus pipeline bookkeeping."""

    event: dict  # word, score, t_start, t_end, model, seq
    step: int  # absolute core step at which it fired
    t_in: float  # time.monotonic() when the audio of that step entered the runtime


@dataclass
class SpikeItem:
    """One core block: input events and hidden spikes for steps t0 .. t0+n_steps-1."""

    t0: int
    events: Events
    hidden: np.ndarray  # uint8 [n_steps x n_hid]
    n_in: int
    t_in: float

    @property
    def n_steps(self) -> int:
        return self.events.n_steps


class Sink:
    """Base class: override what you need. All methods run on the event loop."""

    name = "sink"
    wants_spikes = False

    async def __aenter__(self) -> "Sink":
        return self

    async def __aexit__(self, *exc) -> None:
        return None

    def attach(self, pipeline: Any) -> None:
        """Called once before start: commands registry, model name, etc."""

    async def keyword(self, item: KeywordItem) -> None:
        pass

    async def spikes(self, item: SpikeItem) -> None:
        pass

    async def marker(self, doc: dict) -> None:
        """A JSON-able note (model change)."""

    async def rejected(self, doc: dict) -> None:
        """A stretch of evidence that fired no keyword (``Pipeline(rejected=True)``): ``stretch`` (its id),
        ``best``, ``score``, ``t_start``, ``t_end``, ``reason``, ``model``."""

    def metrics(self, doc: dict) -> None:
        """A periodic metrics snapshot (never blocks)."""

    def model_changed(self, name: str, vocabulary: list[str] | None = None) -> None:
        pass

    def counters(self) -> dict:
        return {}


# ---------------------------------------------------------------------------
# stdout

def _csr_lists(ev: Events) -> tuple[list[int], list[int]]:
    steps = np.repeat(np.arange(ev.n_steps), np.diff(ev.indptr))
    return steps.tolist(), ev.channels.tolist()


class StdoutSink(Sink):
    """JSON lines on stdout (or ``stream``). Writes run in a worker thread, one at a time, in order."""

    name = "stdout"

    def __init__(self, stream: TextIO | None = None, *, spikes: bool = False):
        self.stream = stream
        self.wants_spikes = bool(spikes)
        self._lines = 0
        self._closed_by_reader = False
        self._unwritten = 0

    def _write(self, text: str) -> int:
        """Write; returns the number of lines written (0 once the reader has gone)."""
        if self._closed_by_reader:  # the reader left (e.g. `| head`): count, do not retry
            self._unwritten += text.count("\n")
            return 0
        s = self.stream or sys.stdout
        try:
            with STDOUT_LOCK:
                s.write(text)
                s.flush()
            return text.count("\n")
        except BrokenPipeError:
            self._closed_by_reader = True
            self._unwritten += text.count("\n")
            log.info("stdout closed by its reader; further lines are counted as unwritten")
            try:  # keep the interpreter's final flush from raising again
                os.dup2(os.open(os.devnull, os.O_WRONLY), s.fileno())
            except (OSError, ValueError, AttributeError):
                pass
            return 0

    async def _emit(self, doc: dict) -> None:
        self._lines += await asyncio.to_thread(self._write, json.dumps(doc, separators=(", ", ": ")) + "\n")

    async def keyword(self, item: KeywordItem) -> None:
        await self._emit(item.event)

    async def rejected(self, doc: dict) -> None:
        await self._emit({"event": "rejected", **doc})

    async def spikes(self, item: SpikeItem) -> None:
        st, ch = _csr_lists(item.events)
        hs, hu = np.nonzero(item.hidden)
        text = (json.dumps({"spikes": "input", "t0": item.t0, "n_steps": item.n_steps, "steps": st, "units": ch},
                           separators=(",", ":")) + "\n"
                + json.dumps({"spikes": "hidden", "t0": item.t0, "n_steps": item.n_steps,
                              "steps": hs.tolist(), "units": hu.tolist()}, separators=(",", ":")) + "\n")
        self._lines += await asyncio.to_thread(self._write, text)

    def counters(self) -> dict:
        return {"lines": self._lines, "unwritten_lines": self._unwritten}


# ---------------------------------------------------------------------------
# mqtt

class MqttOut(Sink):
    """Adapter from pipeline items to :class:`spikewire.mqtt.MqttSink` (which owns the connection).

    ``spikes/input`` carries the (step, channel) pairs that had at least one
    input event (the v1 batch format has no multiplicity); ``spikes/hidden``
    carries every hidden spike.  One message per population per block.
    """

    wants_spikes = True

    def __init__(self, url: str, device_id: str, *, options: dict | None = None):
        from .credentials import with_password
        from .wire import Topics, parse_mqtt_url

        from .hass import Discovery, check_device_id

        self.options = dict(options or {})
        try:
            # the password may come from [mqtt] password_file or SPIKEWIRE_MQTT_PASSWORD
            self.url = with_password(parse_mqtt_url(url), password_file=self.options.pop("password_file", None))
            # [mqtt.homeassistant]: checked here, so a bad table or device id is a config error (exit 2)
            self.options["homeassistant"] = Discovery.from_options(self.options.get("homeassistant"))
            if self.options["homeassistant"] is not None:
                check_device_id(device_id)
            Topics(self.url.prefix, device_id)  # a device id that is not one topic level: a config error
        except ValueError as e:
            raise SinkError(f"mqtt sink: {e}") from None
        from .mqtt import MqttTlsError, tls_context

        try:  # a missing or unreadable CA/certificate file is a usage error (exit 2), found before anything runs
            tls_context(self.url)
        except MqttTlsError as e:
            raise SinkError(f"mqtt sink: {e}") from None
        self.name = f"mqtt:{self.url.redacted()}"
        self.device_id = device_id
        self.sink = None
        self._commands = None
        self._control = True
        self._model = "unknown"
        self._vocabulary: list[str] = []

    def attach(self, pipeline: Any) -> None:
        self._commands = pipeline.commands
        self._model = pipeline.model_name
        policy = getattr(pipeline, "control", None)
        self._control = policy.enabled if policy is not None else True
        self._vocabulary = list(pipeline.model.vocabulary)

    async def __aenter__(self) -> "MqttOut":
        from .mqtt import MqttSink

        self.sink = MqttSink(self.url, self.device_id, self._model, commands=self._commands,
                             control=self._control, vocabulary=self._vocabulary, **self.options)
        await self.sink.__aenter__()
        return self

    async def __aexit__(self, *exc) -> None:
        if self.sink is not None:
            await self.sink.aclose()

    def model_changed(self, name: str, vocabulary: list[str] | None = None) -> None:
        if self.sink is not None:
            # the name goes into every keyword from now on; Home Assistant discovery is re-announced
            self.sink.set_model(name, vocabulary)

    async def keyword(self, item: KeywordItem) -> None:
        e = item.event
        await self.sink.publish_keyword({k: e[k] for k in ("word", "score", "t_start", "t_end", "stretch") if k in e})

    async def rejected(self, doc: dict) -> None:
        self.sink.publish_rejected({k: v for k, v in doc.items() if k != "model"})

    async def spikes(self, item: SpikeItem) -> None:
        from .wire import POPULATION_IDS, encode_spike_batch

        ev = item.events
        steps = np.repeat(np.arange(ev.n_steps, dtype=np.int64), np.diff(ev.indptr))
        self.sink.publish_spikes("input", encode_spike_batch(  # repeats kept: each is one spike
            item.t0, item.n_steps, steps, ev.channels, n_units=item.n_in,
            population=POPULATION_IDS["input"]))
        hs, hu = np.nonzero(item.hidden)
        self.sink.publish_spikes("hidden", encode_spike_batch(
            item.t0, item.n_steps, hs, hu, n_units=item.hidden.shape[1], population=POPULATION_IDS["hidden"]))

    def metrics(self, doc: dict) -> None:
        self.sink.publish_metrics(doc)

    def counters(self) -> dict:
        return self.sink.counters() if self.sink is not None else {}


# ---------------------------------------------------------------------------
# file:PATH  (SWSF)

FILE_MAGIC = b"SWSF"
FILE_VERSION = 1
_FILE_HEAD = struct.Struct("<4sBBH")
_FRAME = struct.Struct("<BBHI")
_BLOCK = struct.Struct("<QIIIII")
FRAME_JSON, FRAME_BLOCK = 1, 2
#: read_spike_file's limits: the file, a block's steps, its units and where stream time may end
MAX_SPIKE_FILE_BYTES = 1 << 31
MAX_FILE_BLOCK_STEPS = 1 << 20
MAX_FILE_UNITS = 1 << 16
MAX_FILE_T_END = 1 << 53


def _json_frame(doc: dict) -> bytes:
    payload = json.dumps(doc, separators=(",", ":")).encode()
    return _FRAME.pack(FRAME_JSON, 0, 0, len(payload)) + payload


def encode_block_frame(t0: int, events: Events, hidden: np.ndarray, n_in: int) -> bytes:
    T = events.n_steps
    in_steps = np.repeat(np.arange(T, dtype=np.uint32), np.diff(events.indptr))
    rec_in = np.empty((in_steps.size, 2), "<u4")
    rec_in[:, 0] = in_steps
    rec_in[:, 1] = events.channels
    hs, hu = np.nonzero(hidden)
    rec_h = np.empty((hs.size, 2), "<u4")
    rec_h[:, 0] = hs
    rec_h[:, 1] = hu
    payload = _BLOCK.pack(t0, T, n_in, hidden.shape[1], in_steps.size, hs.size) + rec_in.tobytes() + rec_h.tobytes()
    return _FRAME.pack(FRAME_BLOCK, 0, 0, len(payload)) + payload


class FileSink(Sink):
    """Records input events and hidden spikes to an ``SWSF`` file (see the module docstring).

    Frames are buffered in memory and written by a worker thread at most
    every ``flush_s`` seconds or ``flush_bytes`` bytes, and at the end.
    """

    wants_spikes = True

    def __init__(self, path: str | os.PathLike, *, flush_s: float = 1.0, flush_bytes: int = 1 << 16):
        self.path = Path(path)
        self.name = f"file:{self.path}"
        self.flush_s = flush_s
        self.flush_bytes = flush_bytes
        self._buf = bytearray()
        self._f = None
        self._last_flush = 0.0
        self._header: dict = {}
        self._n = {"blocks": 0, "input_events": 0, "hidden_spikes": 0, "bytes": 0}

    def attach(self, pipeline: Any) -> None:
        self._header = {"event": "header", "model": pipeline.model_name, "step_ms": pipeline.step_ms,
                        "n_in": pipeline.n_in, "n_hid": pipeline.n_hid, "source": pipeline.source.spec,
                        "created_unix": time.time()}

    async def __aenter__(self) -> "FileSink":
        if not self.path.parent.is_dir():
            raise SinkError(f"file sink: directory {self.path.parent} does not exist")
        try:
            self._f = await asyncio.to_thread(open, self.path, "wb")
        except OSError as e:
            raise SinkError(f"file sink: cannot open {self.path}: {e}") from None
        self._buf += _FILE_HEAD.pack(FILE_MAGIC, FILE_VERSION, 0, 0) + _json_frame(self._header)
        await self._flush(force=True)
        return self

    async def __aexit__(self, *exc) -> None:
        if self._f is None:
            return
        self._buf += _json_frame({"event": "end", **self._n})
        try:
            await self._flush(force=True)
        finally:
            f, self._f = self._f, None
            await asyncio.to_thread(f.close)

    def _write(self, data: bytes) -> None:
        self._f.write(data)
        self._f.flush()

    async def _flush(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._buf and (force or len(self._buf) >= self.flush_bytes or now - self._last_flush >= self.flush_s):
            data, self._buf = bytes(self._buf), bytearray()
            self._last_flush = now
            await asyncio.to_thread(self._write, data)
            self._n["bytes"] += len(data)

    async def spikes(self, item: SpikeItem) -> None:
        self._buf += encode_block_frame(item.t0, item.events, item.hidden, item.n_in)
        self._n["blocks"] += 1
        self._n["input_events"] += item.events.n_events
        self._n["hidden_spikes"] += int(np.count_nonzero(item.hidden))
        await self._flush()

    async def marker(self, doc: dict) -> None:
        self._buf += _json_frame(doc)

    def counters(self) -> dict:
        return dict(self._n)


@dataclass
class SpikeRecording:
    """What :func:`read_spike_file` returns. Steps are absolute core steps."""

    header: dict
    markers: list[dict]
    blocks: list[tuple[int, int]]  # (t0, n_steps) per block
    input_steps: np.ndarray  # int64, one per input event (repeats = several events)
    input_channels: np.ndarray  # int32
    hidden_steps: np.ndarray  # int64
    hidden_units: np.ndarray  # int32
    truncated: bool = False
    end: dict | None = None
    n_hid: int = field(default=0)

    @property
    def n_steps(self) -> int:
        """One past the last recorded step."""
        return max((t0 + n for t0, n in self.blocks), default=0)

    MAX_RANGE = 1 << 24  # steps per input_events / hidden_raster call (a recording may jump far ahead)

    def _range(self, start: int, stop: int | None) -> int:
        stop = self.n_steps if stop is None else stop
        if not 0 <= start <= stop or stop - start > self.MAX_RANGE:
            raise ValueError(f"step range [{start}, {stop}) must be ordered and at most {self.MAX_RANGE} steps; "
                             f"pass start/stop (the blocks: .blocks)")
        return stop

    def input_events(self, start: int = 0, stop: int | None = None) -> Events:
        """Input events of steps [start, stop) as CSR (steps without a block are empty)."""
        stop = self._range(start, stop)
        sel = (self.input_steps >= start) & (self.input_steps < stop)
        counts = np.bincount(self.input_steps[sel] - start, minlength=stop - start)
        indptr = np.zeros(stop - start + 1, np.int64)
        np.cumsum(counts, out=indptr[1:])
        return Events(indptr, self.input_channels[sel].astype(np.int32))

    def hidden_raster(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """uint8 [stop-start x n_hid] hidden spikes."""
        stop = self._range(start, stop)
        r = np.zeros((stop - start, self.n_hid), np.uint8)
        sel = (self.hidden_steps >= start) & (self.hidden_steps < stop)
        r[self.hidden_steps[sel] - start, self.hidden_units[sel]] = 1
        return r


def read_spike_file(path: str | os.PathLike) -> SpikeRecording:
    """Read an ``SWSF`` file written by the ``file:`` sink.

    Raises ``ValueError`` for a file that is not SWSF v1 or whose frames are
    inconsistent (also for a JSON frame that is not a bounded JSON object, or a block beyond the
    limits below), ``OSError`` when it cannot be read (not a regular file, larger than
    ``MAX_SPIKE_FILE_BYTES``); a file cut inside its last frame is read up to there with
    ``truncated=True``.
    """
    from .safefile import read_regular
    from .wire import PayloadError, decode_json_object

    data = read_regular(path, MAX_SPIKE_FILE_BYTES)
    if len(data) < _FILE_HEAD.size:
        raise ValueError(f"{path}: too short for a spike file")
    magic, version, _, _ = _FILE_HEAD.unpack_from(data)
    if magic != FILE_MAGIC:
        raise ValueError(f"{path}: not a spikewire spike file (magic {magic!r})")
    if version != FILE_VERSION:
        raise ValueError(f"{path}: spike file version {version} (this spikewire reads {FILE_VERSION})")
    pos = _FILE_HEAD.size
    header: dict = {}
    markers: list[dict] = []
    blocks: list[tuple[int, int]] = []
    ins, inc, hs, hu = [], [], [], []
    truncated = False
    end = None
    n_hid = 0
    while pos < len(data):
        if pos + _FRAME.size > len(data):
            truncated = True
            break
        ftype, _, _, length = _FRAME.unpack_from(data, pos)
        body = data[pos + _FRAME.size:pos + _FRAME.size + length]
        if len(body) < length:
            truncated = True
            break
        pos += _FRAME.size + length
        if ftype == FRAME_JSON:
            try:
                doc = decode_json_object(body, "spike file JSON frame", max_bytes=1 << 20)
            except PayloadError as e:
                raise ValueError(f"{path}: {e}") from None
            if doc.get("event") == "header" and not header:
                header = doc
                n_hid = doc.get("n_hid", 0)
                if not isinstance(n_hid, int) or isinstance(n_hid, bool) or not 0 <= n_hid <= MAX_FILE_UNITS:
                    raise ValueError(f"{path}: header n_hid must be an integer in 0..{MAX_FILE_UNITS}")
            elif doc.get("event") == "end":
                end = doc
            else:
                markers.append(doc)
        elif ftype == FRAME_BLOCK:
            if length < _BLOCK.size:
                raise ValueError(f"{path}: block frame of {length} bytes is too short")
            t0, T, n_in, nh, n_i, n_h = _BLOCK.unpack_from(body)
            if T > MAX_FILE_BLOCK_STEPS or t0 + T > MAX_FILE_T_END or n_in > MAX_FILE_UNITS or nh > MAX_FILE_UNITS:
                raise ValueError(f"{path}: block frame at t0={t0}: n_steps {T}, n_in {n_in}, n_hid {nh} or its end "
                                 f"is beyond this reader's limits ({MAX_FILE_BLOCK_STEPS} steps, {MAX_FILE_UNITS} "
                                 f"units, end {MAX_FILE_T_END})")
            if length != _BLOCK.size + 8 * (n_i + n_h):
                raise ValueError(f"{path}: block frame at t0={t0} has length {length}, "
                                 f"expected {_BLOCK.size + 8 * (n_i + n_h)}")
            rec = np.frombuffer(body, "<u4", offset=_BLOCK.size).reshape(-1, 2)
            ri, rh = rec[:n_i], rec[n_i:]
            if (ri.size and (ri[:, 0].max() >= T or ri[:, 1].max() >= n_in)) or \
                    (rh.size and (rh[:, 0].max() >= T or rh[:, 1].max() >= nh)):
                raise ValueError(f"{path}: block at t0={t0} has a record out of range")
            blocks.append((int(t0), int(T)))
            n_hid = max(n_hid, int(nh))
            ins.append(ri[:, 0].astype(np.int64) + t0)
            inc.append(ri[:, 1].astype(np.int32))
            hs.append(rh[:, 0].astype(np.int64) + t0)
            hu.append(rh[:, 1].astype(np.int32))
        else:
            raise ValueError(f"{path}: unknown frame type {ftype} at byte {pos}")
    cat = lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dt)  # noqa: E731
    return SpikeRecording(header, markers, blocks, cat(ins, np.int64), cat(inc, np.int32), cat(hs, np.int64),
                          cat(hu, np.int32), truncated, end, n_hid)


# ---------------------------------------------------------------------------
# spec parsing

def parse_sink(spec: str, *, device_id: str = "spikewire", spikes: bool = False,
               mqtt_options: dict | None = None, stream: TextIO | None = None) -> Sink:
    """A :class:`Sink` for ``spec``; :class:`SinkError` names the problem and the valid forms."""
    if not isinstance(spec, str) or not spec:
        raise SinkError(f"empty sink spec; expected one of {SINK_SPECS}")
    if spec == "stdout":
        return StdoutSink(stream, spikes=spikes)
    if spec.startswith(("mqtt://", "mqtts://")):
        return MqttOut(spec, device_id, options=mqtt_options)
    if spec.startswith("file:"):
        path = spec[5:]
        if not path:
            raise SinkError("file sink needs a path: file:PATH")
        return FileSink(path)
    raise SinkError(f"unknown sink {spec!r}; expected one of {SINK_SPECS}")
