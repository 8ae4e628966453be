"""Input sources of the streaming runtime (``spikewire run --source SPEC``).

=================  ==========================================================
spec               what it produces
=================  ==========================================================
``mic[:DEVICE]``   audio from a sounddevice/PortAudio input (name or index)
``wav:PATH``       a WAV file, paced at real time (``fast=True``: at once)
``stdin``          raw PCM S16_LE mono from standard input (``rate``)
``mqtt:TOPIC``     binary spike batches (docs/mqtt.md) fed straight to the core
=================  ==========================================================

A source is an async context manager (``__aenter__`` opens and validates, so
a missing file or device fails before the pipeline starts) with
``async run(emit)``: it hands :class:`AudioBlock` or :class:`SpikeBlock`
items to the pipeline through ``emit`` and returns at the end of the stream.
The pipeline cancels ``run`` to stop a live source.

``emit`` offers two ways in (see :class:`Emitter`): ``await emit.put(item)``
waits while the pipeline is full (back-pressure: files, stdin, nothing is
lost), ``emit.put_nowait(item)`` never waits and drops the *oldest* queued
item when full, counting it (live sources: microphone, MQTT).  Live audio
callbacks run in PortAudio's thread and only do
``loop.call_soon_threadsafe(emit.put_nowait, AudioBlock(block.copy(), ...))``.

Library code: no prints; problems go to the ``runtime.sources`` logger.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .events import Events

log = logging.getLogger(__name__)

__all__ = ["AudioBlock", "SpikeBlock", "Emitter", "Source", "SourceError", "WavSource", "StdinSource",
           "MicSource", "parse_source", "list_input_devices"]  # mqtt:TOPIC: spikewire.mqtt.MqttSpikeSource


class SourceError(ValueError):
    """A source spec or its target (file, device, broker) is unusable; the message says why."""


@dataclass(slots=True)
class AudioBlock:
    """int16 mono samples; ``t_in`` = ``time.monotonic()`` when the block entered the runtime."""

    samples: np.ndarray
    t_in: float


@dataclass
class SpikeBlock:
    """Input events for ``events.n_steps`` core steps (from the ``mqtt:`` source).

    ``t0`` is the sender's absolute step (informational; the pipeline keeps its
    own step counter, gaps are filled by the source with empty steps)."""

    events: Events
    t0: int
    t_in: float


class Emitter(Protocol):
    async def put(self, item: Any) -> None: ...  # back-pressure

    def put_nowait(self, item: Any) -> None: ...  # drop-oldest + count (event loop thread only)


class Source:
    """Base class. ``kind`` is "audio" or "spikes"; audio sources know ``rate`` after ``__aenter__``."""

    kind = "audio"
    live = False
    rate: int | None = None

    def __init__(self, spec: str):
        self.spec = spec
        self.counters: dict[str, int] = {}

    async def __aenter__(self) -> "Source":
        return self

    async def __aexit__(self, *exc) -> None:
        return None

    async def run(self, emit: Emitter) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"


#: Input rates a source accepts (the front end's limits, runtime/frontend.py).
MIN_RATE, MAX_RATE = 1000, 384000


def _check_rate(rate: Any, what: str) -> int:
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
        raise SourceError(f"{what}: --rate must be an integer in {MIN_RATE}..{MAX_RATE} Hz, got {rate!r}")
    return rate


def _block_samples(rate: int, block_ms: float) -> int:
    n = int(round(rate * block_ms / 1000.0))
    if n < 1:
        raise SourceError(f"block of {block_ms} ms at {rate} Hz has no samples")
    return n


# ---------------------------------------------------------------------------
# wav:PATH

class WavSource(Source):
    """A WAV file as a stream of blocks, read from the file as it plays.

    Paced (default): block *i* is emitted when ``(i+1)`` blocks of audio time
    have passed since the start, divided by ``speed`` (``speed=2`` plays twice
    as fast); ``fast=True`` emits as fast as the pipeline takes them.
    Back-pressure either way: nothing is dropped.

    The file is read in chunks of about ``READ_S`` seconds (in a worker
    thread), so memory does not grow with the file.  ``__aenter__`` checks
    the header; a float file is also scanned once for NaN/infinite samples
    (chunk by chunk), so that a bad file fails before the stream starts.
    """

    READ_S = 1.0

    def __init__(self, path: str | os.PathLike, *, block_ms: float = 10.0, fast: bool = False,
                 speed: float = 1.0, spec: str | None = None):
        super().__init__(spec or f"wav:{path}")
        self.path = Path(path)
        self.block_ms = float(block_ms)
        self.fast = bool(fast)
        if not speed > 0:
            raise SourceError(f"speed must be > 0, got {speed}")
        self.speed = float(speed)
        self._reader = None
        self.frames = 0
        self.counters = {"blocks": 0, "samples": 0}

    def _open(self):
        from .audio import WAVE_FORMAT_IEEE_FLOAT, WavReader

        r = WavReader(self.path)
        try:
            if r.info.format_tag == WAVE_FORMAT_IEEE_FLOAT:
                step = max(1, int(r.rate * self.READ_S))
                while r.read_float(step).size:  # raises on the first non-finite sample
                    pass
                r.close()
                r = WavReader(self.path)
        except BaseException:
            r.close()
            raise
        return r

    async def __aenter__(self) -> "WavSource":
        from .audio import AudioFileError

        if not self.path.is_file():
            raise SourceError(f"wav source: no such file: {self.path}")
        try:
            self._reader = await asyncio.to_thread(self._open)
        except (AudioFileError, OSError) as e:
            raise SourceError(f"wav source: cannot read {self.path}: {e}") from None
        self.rate, self.frames = self._reader.rate, self._reader.frames
        log.info("wav source %s: %d samples at %d Hz (%.2f s), %s", self.path, self.frames, self.rate,
                 self.frames / self.rate, "fast" if self.fast else f"paced x{self.speed:g}")
        return self

    async def __aexit__(self, *exc) -> None:
        r, self._reader = self._reader, None
        if r is not None:
            r.close()

    @property
    def duration_s(self) -> float:
        return 0.0 if self._reader is None else self.frames / self.rate

    async def run(self, emit: Emitter) -> None:
        from .audio import AudioFileError

        r, rate = self._reader, self.rate
        n = _block_samples(rate, self.block_ms)
        chunk = n * max(1, int(round(self.READ_S * 1000.0 / self.block_ms)))
        loop = asyncio.get_running_loop()
        start = loop.time()
        a = 0
        while True:
            try:
                x = await asyncio.to_thread(r.read_int16, chunk)
            except AudioFileError as e:  # the file changed under us
                raise SourceError(f"wav source: cannot read {self.path}: {e}") from None
            if not x.size:
                break
            for i in range(0, x.size, n):
                block = x[i:i + n]
                if not self.fast:
                    due = start + (a + block.size) / rate / self.speed
                    delay = due - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                await emit.put(AudioBlock(block.copy(), time.monotonic()))
                a += block.size
                self.counters["blocks"] += 1
                self.counters["samples"] += block.size


# ---------------------------------------------------------------------------
# stdin

class StdinSource(Source):
    """Raw PCM S16_LE mono from a pipe (or any binary file object / fd).

    A daemon thread reads (blocking ``os.read``) and hands blocks to the loop
    with back-pressure; at EOF the stream ends (an odd trailing byte is
    dropped and logged).  The thread is a daemon so that a stop request never
    waits for a writer that keeps the pipe open.
    """

    def __init__(self, rate: int = 16000, *, block_ms: float = 10.0, fd: int | None = None,
                 spec: str = "stdin"):
        super().__init__(spec)
        self.rate = _check_rate(rate, "stdin source")
        self.block_ms = float(block_ms)
        self.fd = fd
        self.counters = {"blocks": 0, "samples": 0, "odd_bytes": 0, "samples_after_stop": 0}

    async def run(self, emit: Emitter) -> None:
        loop = asyncio.get_running_loop()
        fd = self.fd if self.fd is not None else sys.stdin.buffer.fileno()
        nbytes = 2 * _block_samples(self.rate, self.block_ms)
        done: asyncio.Future = loop.create_future()
        stop = threading.Event()

        async def put(block: np.ndarray, whole: bool) -> None:
            # Runs on the loop thread, so it is ordered with the stop below: a block is
            # either handed on before the source ends (and then drained) or, read after the
            # stop request, counted as discarded -- never counted as read and then lost.
            if stop.is_set():
                self.counters["samples_after_stop"] += block.size
                return
            await emit.put(AudioBlock(block, time.monotonic()))
            self.counters["blocks"] += int(whole)
            self.counters["samples"] += block.size

        def reader() -> None:
            pending = b""
            try:
                while not stop.is_set():
                    chunk = os.read(fd, nbytes - len(pending))
                    if not chunk:
                        break
                    pending += chunk
                    if len(pending) < nbytes:
                        continue
                    block = np.frombuffer(pending, "<i2").astype(np.int16)
                    pending = b""
                    asyncio.run_coroutine_threadsafe(put(block, True), loop).result()
                if pending and not stop.is_set():
                    even = len(pending) - len(pending) % 2
                    if len(pending) % 2:
                        self.counters["odd_bytes"] += 1
                        log.warning("stdin source: dropped a trailing odd byte (input is not whole S16_LE samples)")
                    if even:
                        block = np.frombuffer(pending[:even], "<i2").astype(np.int16)
                        asyncio.run_coroutine_threadsafe(put(block, False), loop).result()
                loop.call_soon_threadsafe(_set_result, done, None)
            except BaseException as e:  # noqa: BLE001 - reported to the loop, never lost
                if not stop.is_set():
                    loop.call_soon_threadsafe(_set_exception, done, e)

        t = threading.Thread(target=reader, name="spikewire-stdin", daemon=True)
        t.start()
        try:
            await done
        finally:
            stop.set()


def _set_result(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future, exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


# ---------------------------------------------------------------------------
# mic[:DEVICE]

def _import_sounddevice():
    try:
        import sounddevice as sd
    except ImportError as e:
        raise SourceError("microphone input needs the 'sounddevice' package (pip install sounddevice)") from e
    except OSError as e:  # PortAudio shared library missing
        raise SourceError(f"microphone input needs PortAudio ({e}); on Debian/Ubuntu: "
                          f"apt-get install libportaudio2") from e
    return sd


def list_input_devices() -> list[dict]:
    """Input devices as dicts (index, name, hostapi, channels, default_rate, default).

    Raises :class:`SourceError` when sounddevice or PortAudio is missing.
    """
    sd = _import_sounddevice()
    try:
        devices = sd.query_devices()
        default_in = sd.default.device[0]
        apis = sd.query_hostapis()
    except Exception as e:  # PortAudio errors
        raise SourceError(f"cannot query audio devices: {e}") from e
    out = []
    for d in devices:
        if d["max_input_channels"] > 0:
            out.append({"index": d["index"], "name": d["name"], "hostapi": apis[d["hostapi"]]["name"],
                        "channels": d["max_input_channels"], "default_rate": d["default_samplerate"],
                        "default": d["index"] == default_in})
    return out


class MicSource(Source):
    """A sounddevice input stream (mono int16, any device rate; the front end resamples).

    ``device``: None (default input), an index, or a (sub)string of the name.
    The PortAudio callback only copies the block into the loop; when the
    pipeline is behind, the oldest queued audio block is dropped and counted.
    ``first_block`` is set on the first callback (tests start playback then).
    ``capture``: a list to which every block is appended (tests, debugging).
    """

    kind = "audio"
    live = True

    def __init__(self, device: str | int | None = None, *, rate: int | None = None, block_ms: float = 10.0,
                 spec: str | None = None, capture: list | None = None):
        super().__init__(spec or ("mic" if device is None else f"mic:{device}"))
        if isinstance(device, str) and device.strip().lstrip("-").isdigit():
            device = int(device)
        self.device = device
        self.requested_rate = None if rate is None else _check_rate(rate, "mic source")
        self.block_ms = float(block_ms)
        self.capture = capture
        self.first_block: asyncio.Event | None = None
        self._stream = None
        self.counters = {"blocks": 0, "samples": 0, "status_overflow": 0, "status_other": 0}

    async def __aenter__(self) -> "MicSource":
        sd = _import_sounddevice()
        self.first_block = asyncio.Event()
        try:
            info = sd.query_devices(self.device, "input")
        except (ValueError, sd.PortAudioError) as e:
            names = [f"{d['index']}: {d['name']}" for d in list_input_devices()]
            raise SourceError(f"mic source: no input device {self.device!r} ({e}); input devices: "
                              f"{'; '.join(names) or 'none (is an audio server running?)'}") from None
        self.rate = int(round(info["default_samplerate"])) if self.requested_rate is None else self.requested_rate
        self._device_index = info["index"]
        self._device_name = info["name"]
        log.info("mic source: device %s (%s) at %d Hz", info["index"], info["name"], self.rate)
        return self

    async def __aexit__(self, *exc) -> None:
        self._close()

    def _close(self) -> None:
        s, self._stream = self._stream, None
        if s is not None:
            try:
                s.abort()
                s.close()
            except Exception as e:  # noqa: BLE001
                log.debug("mic close: %s", e)

    async def run(self, emit: Emitter) -> None:
        sd = _import_sounddevice()
        loop = asyncio.get_running_loop()
        first = self.first_block
        cap = self.capture

        def deliver(block: np.ndarray, flags: int) -> None:  # on the loop thread
            if flags:
                if flags & 1:
                    self.counters["status_overflow"] += 1
                else:
                    self.counters["status_other"] += 1
            self.counters["blocks"] += 1
            self.counters["samples"] += block.size
            if cap is not None:
                cap.append(block)
            first.set()
            emit.put_nowait(AudioBlock(block, time.monotonic()))

        def callback(indata, frames, t, status) -> None:  # PortAudio thread: copy and hand over only
            flags = (1 if status.input_overflow else 0) | (2 if (status and not status.input_overflow) else 0)
            loop.call_soon_threadsafe(deliver, indata[:, 0].copy(), flags)

        try:
            self._stream = sd.InputStream(device=self._device_index, samplerate=self.rate, channels=1,
                                          dtype="int16", blocksize=_block_samples(self.rate, self.block_ms),
                                          callback=callback)
            self._stream.start()
        except Exception as e:
            self._close()
            raise SourceError(f"mic source: cannot open {self._device_name!r} at {self.rate} Hz: {e}") from None
        try:
            await asyncio.Event().wait()  # until cancelled
        finally:
            self._close()


# ---------------------------------------------------------------------------
# mqtt:TOPIC lives with the other MQTT client: spikewire.mqtt.MqttSpikeSource (imported on use,
# so that the other sources never import aiomqtt)


def __getattr__(name: str) -> Any:
    if name == "MqttSpikeSource":  # the old home
        from .mqtt import MqttSpikeSource

        return MqttSpikeSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------
# spec parsing

SOURCE_SPECS = "mic[:DEVICE], wav:PATH, stdin, mqtt:TOPIC"


@dataclass
class SourceOptions:
    block_ms: float = 10.0
    fast: bool = False
    speed: float = 1.0
    rate: int | None = None  # stdin rate (default 16000) / requested mic rate
    broker: str | None = None  # for mqtt:TOPIC
    extra: dict = field(default_factory=dict)


def parse_source(spec: str, options: SourceOptions | None = None) -> Source:
    """A :class:`Source` for ``spec``; :class:`SourceError` names the problem and the valid forms."""
    o = options or SourceOptions()
    if not isinstance(spec, str) or not spec:
        raise SourceError(f"empty source spec; expected one of {SOURCE_SPECS}")
    kind, _, arg = spec.partition(":")
    if kind == "mic":
        return MicSource(arg or None, rate=o.rate, block_ms=o.block_ms, spec=spec)
    if kind == "wav":
        if not arg:
            raise SourceError("wav source needs a path: wav:PATH")
        return WavSource(arg, block_ms=o.block_ms, fast=o.fast, speed=o.speed, spec=spec)
    if kind == "stdin" and not arg:
        return StdinSource(16000 if o.rate is None else o.rate, block_ms=o.block_ms, spec=spec)
    if kind == "mqtt":
        if not arg or arg.startswith("//"):
            raise SourceError("mqtt source needs a topic: mqtt:TOPIC (the broker comes from --broker)")
        from .mqtt import MqttSpikeSource

        return MqttSpikeSource(arg, o.broker, spec=spec)
    raise SourceError(f"unknown source {spec!r}; expected one of {SOURCE_SPECS}")
