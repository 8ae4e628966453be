"""The streaming runtime: source -> front end -> core -> decision -> sinks.

Named tasks under one :class:`asyncio.TaskGroup`, joined by bounded queues::

    source:SPEC ──audio q──> frontend ──events q──> core ──core q──> decision ──sink q──> sink:NAME (one per sink)
      (mic cb thread            (C, own lane)       (C, own lane)     (Decider)              stdout / mqtt / file
       or file/stdin/mqtt)
                       metrics (every N s)   watchdog (drain deadline after a stop request)

========== ======== =========================================================
queue      capacity overflow policy (every drop is counted in the metrics)
========== ======== =========================================================
audio      100      live sources (mic, mqtt:): drop the **oldest** block,
                    count ``dropped.audio``; file/stdin: back-pressure (the
                    reader waits; nothing is lost)
events     32       back-pressure (the front end waits for the core)
core       32       back-pressure (the core waits for the decision)
sink:NAME  256      keyword events and markers: back-pressure (never dropped
                    here); spike blocks: dropped when the queue is full,
                    counted in ``dropped.spike_blocks[NAME]``
========== ======== =========================================================

So for a live source the only place audio is lost is the head of the
pipeline, where losing the oldest audio keeps latency bounded.

Compute runs in *lanes* (:class:`_Lane`), one for the front end, one for the
core: a call runs on the event loop while the lane's previous call took less
than ``inline_ms`` (5 ms; a 10 ms block costs ~0.1 ms, and a thread handoff
about as much again), else on the lane's own single-thread executor, so long
calls (large blocks, a slow CPU) never hold the loop for long.  The calls of
one lane never overlap, whichever thread runs them, so a Core never sees two
threads (snapshots and learnt-weight copies go through the core's lane too).
On-line learning (``learn``/``label``/``reward``, runtime/onlinelearn.py)
replays stretches on a third lane that always uses its thread, with its own
core; only the copy of the new weights into the live core runs in the core's
lane.

Model reload swaps front end + core + decider *between blocks*: the new
bundle is adopted by the front-end stage at its next block and travels with
the data, so every block is processed by exactly one model end to end.

Shutdown (:meth:`Pipeline.request_stop`, SIGINT/SIGTERM in the CLI): the
source stops, an end-of-stream marker follows the data still in the queues
(the front end is flushed), every sink drains and closes.  If that takes
longer than ``drain_timeout`` the tasks are cancelled and the in-flight
items are reported (``in_flight_dropped``).  :meth:`Pipeline.run` returns the
final metrics either way.
"""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import socket
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .control import CommandError, CommandRegistry, ControlChannel, ControlPolicy
from .decision import Decider
from .events import Events
from .frontend import FrontEnd
from .learning import LearningConfig
from .model import Model, load as load_model, shipped_models
from .onlinelearn import LearningSession, ReplayConfig
from .stateblob import CORE as _CORE_TAG, parse as _parse_state
from .sinks import KeywordItem, Sink, SpikeItem
from .sources import AudioBlock, Source, SpikeBlock

log = logging.getLogger(__name__)

__all__ = ["Pipeline", "PipelineError", "Bundle", "DropQueue", "run_pipeline"]

_EOS = object()  # end of stream marker travelling down the queues


class PipelineError(RuntimeError):
    """The pipeline could not start or failed while running (message names the stage)."""


class _DrainTimeout(Exception):
    def __init__(self, in_flight: int):
        super().__init__(f"drain timed out with {in_flight} item(s) in flight")
        self.in_flight = in_flight


class DropQueue:
    """A bounded asyncio queue with two ways in.

    ``await put(x)`` waits while full (back-pressure).  ``put_nowait(x)``
    never waits: when full it drops the *oldest* item and counts it.
    Only call it from the event loop thread (a callback thread uses
    ``loop.call_soon_threadsafe(q.put_nowait, item)``).
    """

    def __init__(self, name: str, maxsize: int):
        self.name = name
        self.maxsize = maxsize
        self._q: asyncio.Queue = asyncio.Queue(maxsize)
        self.dropped = 0
        self.high_water = 0
        self._last_warn = 0.0

    async def put(self, item: Any) -> None:
        await self._q.put(item)
        self.high_water = max(self.high_water, self._q.qsize())

    def put_nowait(self, item: Any) -> None:
        while self._q.full():
            self._q.get_nowait()
            self.dropped += 1
            now = time.monotonic()
            if now - self._last_warn > 1.0:
                self._last_warn = now
                log.warning("queue %s full (%d): dropped the oldest item (%d dropped so far)", self.name,
                            self.maxsize, self.dropped)
        self._q.put_nowait(item)
        self.high_water = max(self.high_water, self._q.qsize())

    def try_put(self, item: Any) -> bool:
        """Put if there is room, else drop ``item`` (the newest), count it and return False."""
        try:
            self._q.put_nowait(item)
        except asyncio.QueueFull:
            self.dropped += 1
            return False
        self.high_water = max(self.high_water, self._q.qsize())
        return True

    async def get(self) -> Any:
        return await self._q.get()

    def qsize(self) -> int:
        return self._q.qsize()

    def stats(self) -> dict:
        return {"depth": self._q.qsize(), "max": self.maxsize, "high_water": self.high_water,
                "dropped": self.dropped}


@dataclass
class Bundle:
    """Everything that depends on the model; swapped as a whole by ``reload``."""

    model: Model
    frontend: FrontEnd | None
    core: Any
    decider: Decider
    generation: int
    ref: str

    @property
    def name(self) -> str:
        return self.model.name


@dataclass(slots=True)
class _CoreOut:
    bundle: Bundle
    t0: int
    events: Events
    spikes: np.ndarray
    cadc: np.ndarray
    n_spikes: int
    t_in: float


@dataclass
class _ModelChange:
    bundle: Bundle
    step: int


def _timed(fn, *args):
    """Run ``fn(*args)`` (in a worker thread) and return (result, seconds of compute)."""
    t = time.perf_counter()
    r = fn(*args)
    return r, time.perf_counter() - t


#: Pipeline(inline_ms=): a stage call whose previous call took less runs on the event loop
INLINE_MS = 5.0


class _Lane:
    """Where one stage's compute runs (the front end's, the core's, the learner's): on the event
    loop while its calls are short, else on the lane's own single-thread executor.

    A 10 ms block costs ~0.1 ms of front end + core here, a thread handoff (submit, wake the worker,
    wake the loop through its self-pipe) about as much again: inline, the runtime's per-block cost
    halves (docs/raspberry-pi.md, "CPU budget"). A call runs on the loop when the lane's previous
    call took less than ``inline_s`` (0: always the thread), so a long call (large blocks, learning
    on a slow CPU) sends the next ones to the thread and the loop stays responsive. Calls of one
    lane never overlap (an asyncio lock), so what a lane owns (a FrontEnd, a Core) is used by one
    call at a time whichever thread runs it. Results do not depend on where a call ran."""

    def __init__(self, name: str, inline_s: float):
        self.name = name
        self.inline_s = float(inline_s)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"spikewire-{name}")
        self._lock = asyncio.Lock()
        self._last = 0.0
        self._thread_call = None  # the last call given to the thread (a concurrent Future)
        self.calls = {"inline": 0, "thread": 0}

    async def call(self, fn, *args):
        """``(fn(*args), seconds of compute)``."""
        async with self._lock:
            prev = self._thread_call
            if prev is not None and not prev.done():
                # its caller was cancelled, but a call cannot be stopped once it runs on the thread:
                # the lane stays taken until it has finished
                await asyncio.wait([asyncio.wrap_future(prev)])
            self._thread_call = None
            if self._last < self.inline_s:
                t = time.perf_counter()
                r = fn(*args)
                dt = time.perf_counter() - t
                self.calls["inline"] += 1
            else:
                self._thread_call = self.executor.submit(_timed, fn, *args)
                self.calls["thread"] += 1
                r, dt = await asyncio.wrap_future(self._thread_call)
            self._last = dt
            return r, dt

    def shutdown(self, wait: bool) -> None:
        self.executor.shutdown(wait=wait, cancel_futures=True)


def _pct(values, q: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(np.fromiter(values, float), q)) * 1000.0, 3)


class Pipeline:
    """One streaming session.

    Parameters
    ----------
    model : Model, str or path
        A loaded model, a shipped model name (``"kws-digits"``) or a ``.swm`` path.
    source : Source
        From :func:`spikewire.sources.parse_source`.
    sinks : list of Sink
        From :func:`spikewire.sinks.parse_sink`.
    metrics_interval : float
        Seconds between metrics snapshots (to MQTT sinks and the log); 0 disables.
    snapshot_dir : path
        Where ``snapshot`` writes when no path is given.
    drain_timeout : float
        Seconds allowed for draining after a stop request.
    control : ControlPolicy
        What control requests may do (``[control]``; default: every command, ``reload`` of
        shipped model names only). docs/security.md.
    learn : bool
        Start with on-line learning on (the ``learn`` command switches it; docs/learning.md).
    learning, replay : LearningConfig, ReplayConfig
        The rule and the replay buffer's bounds for on-line learning.
    checkpoint : path
        Learnt weights and learning state are checkpointed there (atomically, the previous file
        kept as ``NAME.prev``) every ``checkpoint_s`` seconds when they changed, on ``save`` and at
        shutdown; at start the newest good checkpoint of this model is taken (docs/learning.md).
    inline_ms : float
        Front-end and core calls run on the event loop while the previous call of that stage took
        less than this (milliseconds), else on the stage's own thread; 0: always the threads
        (:class:`_Lane`). Results are the same either way; replays always run on their thread.
    rejected : bool
        Also send every stretch of evidence the decision rejected to the sinks (stdout lines, the
        MQTT ``rejected`` topic), with its id, so that a user who was not heard can label it.
    """

    def __init__(self, model: Model | str | os.PathLike, source: Source, sinks: list[Sink], *,
                 metrics_interval: float = 5.0, snapshot_dir: str | os.PathLike = ".",
                 drain_timeout: float = 5.0, device_id: str | None = None, control: ControlPolicy | None = None,
                 audio_queue: int = 100, event_queue: int = 32, core_queue: int = 32, sink_queue: int = 256,
                 learn: bool = False, learning: LearningConfig | None = None, replay: ReplayConfig | None = None,
                 checkpoint: str | os.PathLike | None = None, checkpoint_s: float = 60.0,
                 inline_ms: float = INLINE_MS, rejected: bool = False):
        self.model_ref = str(model) if not isinstance(model, Model) else model.name
        self._initial_model = model
        self.source = source
        self.sinks = list(sinks)
        self.metrics_interval = float(metrics_interval)
        self.snapshot_dir = Path(snapshot_dir)
        self.drain_timeout = float(drain_timeout)
        self.device_id = device_id or socket.gethostname().split(".")[0] or "spikewire"
        self.control = control if control is not None else ControlPolicy()
        self.commands = CommandRegistry()
        self.learning = LearningSession(learning, replay, checkpoint)
        if not checkpoint_s > 0:
            raise ValueError(f"checkpoint_s must be > 0, got {checkpoint_s!r}")
        self.checkpoint_s = float(checkpoint_s)
        if not inline_ms >= 0:
            raise ValueError(f"inline_ms must be >= 0, got {inline_ms!r}")
        self.inline_ms = float(inline_ms)
        self.learning.active = bool(learn)
        self.publish_rejected = bool(rejected)
        self._stretch_ids = itertools.count()  # one id sequence for every model's decider (reloads too)
        self._register_commands()
        if self.control.allow is not None:
            self.commands.allowed = frozenset(self.control.allow)
        self._qsizes = (audio_queue, event_queue, core_queue, sink_queue)
        self._bundle: Bundle | None = None  # newest adopted by the front-end stage
        self._core_bundle: Bundle | None = None  # the one the core stage uses
        self._pending: Bundle | None = None
        self._adopted: asyncio.Event | None = None
        self._generation = 0
        self._stop: asyncio.Event | None = None
        self._done: asyncio.Event | None = None
        self._paused = False
        self._resumed: asyncio.Event | None = None
        self._running = False
        self._t_start = 0.0
        self._seq = 0
        self._step = 0  # next stream step (core stage)
        self._decided_step = 0  # the step after the last block the decision stage has seen
        self._c = dict.fromkeys(("audio_blocks", "audio_samples", "blocks", "input_events", "hidden_spikes",
                                 "keywords", "rejected", "paused_steps", "paused_blocks", "sink_errors", "in_flight_dropped"),
                                0)
        self._busy_fe = 0.0
        self._busy_core = 0.0
        self._lat_block: deque = deque(maxlen=4096)
        self._lat_kw: deque = deque(maxlen=4096)
        self._last_rate = (0.0, 0, 0)  # (t, input events, hidden spikes) at the last snapshot
        self.final_metrics: dict | None = None

    # -- properties used by sinks -----------------------------------------------------
    @property
    def model(self) -> Model:
        return self._bundle.model

    @property
    def model_name(self) -> str:
        return self._bundle.name if self._bundle else str(self.model_ref)

    @property
    def step_ms(self) -> float:
        return self._bundle.model.frontend.step_ms

    @property
    def n_in(self) -> int:
        return self._bundle.model.core.n_in

    @property
    def n_hid(self) -> int:
        return self._bundle.model.core.n_hid

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def running(self) -> bool:
        """True from when the source, model and sinks are up until :meth:`run` ends."""
        return self._running

    # -- control ------------------------------------------------------------------------
    def _register_commands(self) -> None:
        """The standard commands. More (e.g. on-line learning: ``learn``, ``label``,
        ``reward``) are added the same way: ``pipeline.commands.register(name, handler,
        required=..., optional=...)``; every MQTT sink shares this registry."""
        r = self.commands
        r.register("pause", self.pause, help="stop feeding the core (audio is discarded, stream time goes on)")
        r.register("resume", self.resume, help="resume after pause")
        r.register("reload", self.reload, optional={"path": str, "discard": bool},
                   help="load a model (default: the current one); learnt weights are saved first or kept")
        r.register("snapshot", self.snapshot, optional={"path": str}, help="write core state + counters")
        r.register("status", self.status, help="the current metrics")
        self.learning.register(r, self)

    # -- on-line learning: the threads it uses (onlinelearn.LearningSession) -------------------
    def learning_bundle(self) -> Bundle:
        """The bundle whose core is streaming now (labels and rewards learn into it)."""
        return self._core_bundle or self._bundle

    async def run_core_thread(self, fn, *args):
        """``fn(*args)`` in the core's lane (between two blocks; never beside a core call)."""
        return (await self._core_lane.call(fn, *args))[0]

    async def run_learn_thread(self, fn, *args):
        """``fn(*args)`` on the learning thread (replays; never the live core)."""
        return (await self._learn_lane.call(fn, *args))[0]

    def control_channel(self, reply, *, name: str = "control", queue: int = 16,
                        timeout: float | None = 10.0) -> ControlChannel:
        """A new door into this pipeline's commands (one per place requests come from; the MQTT sink
        opens its own over :attr:`commands`). ``reply(bytes)`` receives every encoded reply; run the
        channel's :meth:`ControlChannel.run` in a task while it is in use."""
        return ControlChannel(self.commands, reply, name=name, queue=queue, timeout=timeout)

    async def until_decided(self, audio_samples: int, poll_s: float = 0.002) -> int:
        """Wait until the front end has taken ``audio_samples`` samples in all and the decision has seen
        every step the core ran from them; returns that stream step (the next step to come).  For a
        driver that feeds an audio source itself and must know what was decided before it goes on
        (``spikewire adapt`` plays a shot, then labels its stretch).  Not while paused."""
        while not (self._c["audio_samples"] >= audio_samples and self._q_events.qsize() == 0
                   and self._q_core.qsize() == 0 and self._decided_step == self._step):
            if self._done.is_set() or self._stop.is_set():
                raise PipelineError(f"the pipeline stopped before {audio_samples} audio samples were decided")
            if self._paused:
                raise PipelineError("until_decided: the pipeline is paused")
            await asyncio.sleep(poll_s)
        return self._step

    def pause(self) -> dict:
        if not self._paused:
            self._paused = True
            self._resumed.clear()
            log.info("paused at step %d", self._step)
        return {"paused": True, "step": self._step}

    def resume(self) -> dict:
        if self._paused:
            self._paused = False
            self._resumed.set()
            log.info("resumed at step %d", self._step)
        return {"paused": False, "step": self._step}

    def status(self) -> dict:
        return self.metrics_snapshot()

    async def reload(self, path: str | None = None, discard: bool = False) -> dict:
        """Load a model and swap it in between blocks: a shipped name, a ``.swm`` file inside
        ``control.models_dir`` (symlinks resolved, no ``..``), or by default the current model.
        Learnt weights are checkpointed first (or, without a checkpoint file, the reload is refused
        unless ``discard``); the new model takes the checkpoint learnt from the same model file."""
        ref = await asyncio.to_thread(self._reload_ref, path)  # CommandError: not allowed
        try:
            model = await asyncio.to_thread(load_model, ref)
        except (OSError, ValueError) as e:
            raise CommandError(f"reload: cannot load model {path or ref!r}: {e}") from None
        try:
            bundle = await asyncio.to_thread(self._make_bundle, model, ref)
        except (ValueError, RuntimeError) as e:
            raise CommandError(f"reload: model {ref!r:.100} does not fit this source: {e}") from None
        learnt = await self.learning.before_reload(discard)
        learnt.update(await self.learning.onto_new_bundle(bundle))
        self._pending = bundle
        self._adopted.clear()
        adopted = True
        try:
            async with asyncio.timeout(5.0):
                await self._adopted.wait()
        except TimeoutError:  # no block flowed (e.g. the source is idle): it is adopted with the next one
            adopted = False
        log.info("reload: model %s (generation %d) %s", model.name, bundle.generation,
                 "active" if adopted else "pending")
        return {"model": model.name, "generation": bundle.generation, "adopted": adopted, **learnt}

    def _reload_ref(self, path: str | None) -> str:
        """What a reload request may load (control requests come from the network, so a path is
        never taken as it is: see :meth:`ControlPolicy.model_file`)."""
        if path is None:
            return self._bundle.ref  # the model this pipeline was started with (by its operator)
        shipped = shipped_models()
        if path in shipped:  # the packaged file itself (not a file of that name in the working folder)
            return str(shipped[path])
        return str(self.control.model_file(path))

    async def snapshot(self, path: str | None = None) -> dict:
        """Core state (``Core.save_state``) + counters to an ``.npz`` (no pickle); returns the path."""
        b = self._core_bundle or self._bundle
        state = await self.run_core_thread(b.core.save_state)  # in the core's lane
        meta = {"model": b.name, "model_ref": b.ref, "generation": b.generation, "step": self._step,
                "core_steps": None, "metrics": self.metrics_snapshot(), "t_unix": time.time()}
        if path:
            # control commands come from the network: a snapshot may only be written
            # inside the snapshot directory, never to an arbitrary path
            root = self.snapshot_dir.resolve()
            p = (root / path).resolve()
            if root != p.parent and root not in p.parents:
                raise CommandError(f"snapshot: path {path!r} is outside the snapshot directory {root}")
            if p.suffix != ".npz":
                raise CommandError(f"snapshot: path {path!r} must end in .npz")
        else:
            p = self.snapshot_dir / f"snapshot-{self.device_id}-{time.strftime('%Y%m%d-%H%M%S')}-{self._step}.npz"
        if not p.parent.is_dir():
            raise CommandError(f"snapshot: directory {p.parent} does not exist")

        def write() -> None:
            with open(p, "wb") as f:
                np.savez(f, core_state=np.frombuffer(state, np.uint8),
                         meta_json=np.frombuffer(json.dumps(meta).encode(), np.uint8))

        try:
            await asyncio.to_thread(write)
        except OSError as e:
            raise CommandError(f"snapshot: cannot write {p}: {e}") from None
        log.info("snapshot written to %s", p)
        return {"path": str(p.resolve()), "step": self._step, "bytes": len(state)}

    def request_stop(self) -> None:
        """Stop the source and drain (idempotent; safe from a signal handler on the loop)."""
        if self._stop is not None and not self._stop.is_set():
            log.info("stop requested: draining")
            self._stop.set()

    # -- set-up --------------------------------------------------------------------------
    def _make_bundle(self, model: Model, ref: str) -> Bundle:
        fe = None
        if self.source.kind == "audio":  # a spike source's n_in follows the bundle when it is adopted
            fe = FrontEnd(model.frontend, self.source.rate)
        core = model.make_core()
        dec = model.decider(ids=self._stretch_ids)
        self._generation += 1
        return Bundle(model, fe, core, dec, self._generation, ref)

    # -- stages --------------------------------------------------------------------------
    async def _source_stage(self) -> None:
        run = asyncio.create_task(self.source.run(self._q_audio), name=f"source-run:{self.source.spec}")
        stop = asyncio.create_task(self._stop.wait(), name="source-stop-wait")
        try:
            done, _ = await asyncio.wait({run, stop}, return_when=asyncio.FIRST_COMPLETED)
            if run in done:
                run.result()  # a source failure fails the pipeline
                log.info("source %s ended", self.source.spec)
            else:
                log.info("source %s stopped on request", self.source.spec)
        finally:
            for t in (run, stop):
                t.cancel()
            await asyncio.gather(run, stop, return_exceptions=True)
            await self._q_audio.put(_EOS)

    async def _frontend_stage(self) -> None:
        lane = self._fe_lane
        last_t_in = time.monotonic()
        while True:
            item = await self._q_audio.get()
            if self._pending is not None:  # the swap point of a reload: between two blocks
                self._bundle, self._pending = self._pending, None
                if hasattr(self.source, "n_in"):
                    self.source.n_in = self._bundle.model.core.n_in
                self._adopted.set()
            b = self._bundle
            if item is _EOS:
                if b.frontend is not None:
                    ev, dt = await lane.call(b.frontend.flush)
                    self._busy_fe += dt
                    if ev.n_steps:
                        await self._q_events.put((b, ev, last_t_in))
                await self._q_events.put(_EOS)
                return
            if isinstance(item, AudioBlock):
                ev, dt = await lane.call(b.frontend.process, item.samples)
                self._busy_fe += dt
                self._c["audio_blocks"] += 1
                self._c["audio_samples"] += item.samples.size
                last_t_in = item.t_in
                if ev.n_steps:
                    await self._q_events.put((b, ev, item.t_in))
            elif isinstance(item, SpikeBlock):
                await self._q_events.put((b, item.events, item.t_in))

    async def _core_stage(self) -> None:
        lane = self._core_lane
        while True:
            item = await self._q_events.get()
            if item is _EOS:
                await self._q_core.put(_EOS)
                return
            b, ev, t_in = item
            if b is not self._core_bundle:
                old, self._core_bundle = self._core_bundle, b
                if old is not None:
                    await self._q_core.put(_ModelChange(b, self._step))
            t0 = self._step
            self._step += ev.n_steps
            if self._paused:
                self._c["paused_steps"] += ev.n_steps
                self._c["paused_blocks"] += 1
                continue
            if self.learning.active:
                ckpt = self.learning.wants_checkpoint(t0)
                (out, state), dt = await lane.call(_run_keeping, b.core, ev, ckpt)
                self.learning.add_block(b.generation, t0, ev, state)
            else:
                out, dt = await lane.call(b.core.run, ev)
            self._busy_core += dt
            await self._q_core.put(_CoreOut(b, t0, ev, out.spikes, out.cadc, out.n_spikes, t_in))

    async def _emit_keywords(self, b: Bundle, kws: list, t_in: float) -> None:
        for k in kws:
            event = {**k.to_dict(), "model": b.name, "seq": self._seq}
            self._seq += 1
            self._c["keywords"] += 1
            ki = KeywordItem(event, k.step, t_in)
            for q in self._q_sinks:
                await q.put(("kw", ki))

    async def _emit_rejected(self, b: Bundle, found: list) -> None:
        """Stretches that fired no keyword: counted; sent to the sinks when ``rejected`` is on."""
        for d in found:
            if d.fired:
                continue
            self._c["rejected"] += 1
            if not self.publish_rejected:
                continue
            step_s = b.decider.step_s
            doc = {"stretch": d.id, "best": b.model.vocabulary[d.unit], "score": round(d.code / 255.0, 4),
                   "t_start": round(d.start * step_s, 4), "t_end": round(d.end * step_s, 4), "reason": d.reason,
                   "model": b.name}
            for q in self._q_sinks:
                await q.put(("rej", doc))

    async def _decision_stage(self) -> None:
        last: tuple[Bundle, float] | None = None  # the bundle that decided last, and its last block's t_in
        while True:
            item = await self._q_core.get()
            if item is _EOS or isinstance(item, _ModelChange):
                # the end of the stream, or of this model: a keyword still being decided is decided now
                if last is not None:
                    kws = last[0].decider.flush()
                    found = last[0].decider.take_stretches()
                    self.learning.add_stretches(last[0].generation, found)
                    await self._emit_keywords(last[0], kws, last[1])
                    await self._emit_rejected(last[0], found)
                    last = None
            if item is _EOS:
                for q in self._q_sinks:
                    await q.put(_EOS)
                return
            if isinstance(item, _ModelChange):
                doc = {"event": "model", "name": item.bundle.name, "ref": item.bundle.ref,
                       "generation": item.bundle.generation, "step": item.step}
                for s, q in zip(self.sinks, self._q_sinks):
                    s.model_changed(item.bundle.name, item.bundle.model.vocabulary)
                    await q.put(("marker", doc))
                continue
            b = item.bundle
            kws = b.decider.update(item.cadc, item.t0)
            found = b.decider.take_stretches() if b.decider.has_stretches else ()
            if found:
                self.learning.add_stretches(b.generation, found)
            self._decided_step = item.t0 + item.events.n_steps
            last = (b, item.t_in)
            self._c["blocks"] += 1
            self._c["input_events"] += item.events.n_events
            self._c["hidden_spikes"] += item.n_spikes
            self._lat_block.append(time.monotonic() - item.t_in)
            if kws:
                await self._emit_keywords(b, kws, item.t_in)
            if found:
                await self._emit_rejected(b, found)
            si = None
            for s, q in zip(self.sinks, self._q_sinks):
                if s.wants_spikes:
                    si = si or SpikeItem(item.t0, item.events, item.spikes, b.model.core.n_in, item.t_in)
                    q.try_put(("spk", si))

    async def _sink_stage(self, sink: Sink, q: DropQueue) -> None:
        while True:
            item = await q.get()
            if item is _EOS:
                return
            kind, x = item
            try:
                if kind == "kw":
                    await sink.keyword(x)
                    self._lat_kw.append(time.monotonic() - x.t_in)
                elif kind == "spk":
                    await sink.spikes(x)
                elif kind == "rej":
                    await sink.rejected(x)
                else:
                    await sink.marker(x)
            except (OSError, ValueError, RuntimeError) as e:
                self._c["sink_errors"] += 1
                log.error("sink %s failed on a %s item: %s", sink.name, kind, e)

    async def _join(self, tasks: list[asyncio.Task]) -> None:
        await asyncio.wait(tasks)
        self._done.set()

    async def _checkpoint_stage(self) -> None:
        """Learnt weights to the checkpoint file every ``checkpoint_s`` seconds when they changed."""
        if self.learning.checkpoint is None:
            return
        while not self._done.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.checkpoint_s):
                    await self._done.wait()
            if self._done.is_set():
                return
            if self.learning.dirty:
                try:
                    await self.learning.cmd_save()
                except CommandError as e:
                    log.error("checkpoint: %s", e)

    async def _metrics_stage(self) -> None:
        if self.metrics_interval <= 0:
            return
        while not self._done.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.metrics_interval):
                    await self._done.wait()
            if self._done.is_set():
                return
            m = self.metrics_snapshot()
            log.info("metrics %s", json.dumps(m, separators=(",", ":")))
            for s in self.sinks:
                try:
                    s.metrics(m)
                except (RuntimeError, ValueError, TypeError) as e:
                    log.warning("sink %s rejected metrics: %s", s.name, e)

    async def _watchdog(self) -> None:
        waits = [asyncio.create_task(self._stop.wait()), asyncio.create_task(self._done.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in waits:
                t.cancel()
        if self._done.is_set():
            return
        try:
            async with asyncio.timeout(self.drain_timeout):
                await self._done.wait()
        except TimeoutError:
            raise _DrainTimeout(self._in_flight()) from None

    def _lanes(self) -> list:
        return [getattr(self, a) for a in ("_fe_lane", "_core_lane", "_learn_lane") if hasattr(self, a)]

    def _in_flight(self) -> int:
        return (self._q_audio.qsize() + self._q_events.qsize() + self._q_core.qsize()
                + sum(q.qsize() for q in self._q_sinks))

    # -- metrics ---------------------------------------------------------------------------
    def metrics_snapshot(self) -> dict:
        """Counters, queue depths, drops, latency percentiles, spike rates (JSON-able)."""
        now = time.monotonic()
        b = self._core_bundle or self._bundle
        step_ms = b.model.frontend.step_ms if b else 1.0
        stream_s = self._step * step_ms / 1000.0
        busy = self._busy_fe + self._busy_core
        t_last, in_last, hid_last = self._last_rate
        dt = now - t_last if t_last else now - self._t_start
        self._last_rate = (now, self._c["input_events"], self._c["hidden_spikes"])
        queues = {}
        if self._running:
            queues = {"audio": self._q_audio.stats(), "events": self._q_events.stats(),
                      "core": self._q_core.stats()}
            for s, q in zip(self.sinks, self._q_sinks):
                queues[f"sink:{s.name}"] = q.stats()
        return {
            "model": b.name if b else self.model_ref,
            "source": self.source.spec,
            "uptime_s": round(now - self._t_start, 3) if self._t_start else 0.0,
            "stream_s": round(stream_s, 3),
            "steps": self._step,
            "paused": self._paused,
            "rtf": round(busy / stream_s, 5) if stream_s > 0 else None,
            "busy_s": {"frontend": round(self._busy_fe, 4), "core": round(self._busy_core, 4)},
            "calls": {lane.name: dict(lane.calls) for lane in self._lanes()},
            "counts": dict(self._c),
            "queues": queues,
            "dropped": {
                "audio": queues.get("audio", {}).get("dropped", 0),
                "spike_blocks": {s.name: q.dropped for s, q in zip(self.sinks, self._q_sinks)} if self._running else {},
                "paused_steps": self._c["paused_steps"],
                "in_flight": self._c["in_flight_dropped"],
            },
            "latency_ms": {"block_p50": _pct(self._lat_block, 50), "block_p99": _pct(self._lat_block, 99),
                           "keyword_p50": _pct(self._lat_kw, 50), "keyword_p99": _pct(self._lat_kw, 99)},
            "spikes_per_s": {"input": round((self._c["input_events"] - in_last) / dt, 1) if dt > 0 else None,
                             "hidden": round((self._c["hidden_spikes"] - hid_last) / dt, 1) if dt > 0 else None},
            "learning": {"on": self.learning.active, **self.learning.counts,
                         "buffer_steps": self.learning.buffer.steps},
            "source_counters": dict(self.source.counters),
            "sinks": {s.name: s.counters() for s in self.sinks},
        }

    # -- run ------------------------------------------------------------------------------------
    async def run(self) -> dict:
        """Run until the source ends or :meth:`request_stop`; returns the final metrics."""
        if self._running:
            raise RuntimeError("a Pipeline runs once")
        self._stop, self._done = asyncio.Event(), asyncio.Event()
        self._resumed, self._adopted = asyncio.Event(), asyncio.Event()
        self._resumed.set()
        aq, eq, cq, sq = self._qsizes
        self._q_audio, self._q_events, self._q_core = DropQueue("audio", aq), DropQueue("events", eq), \
            DropQueue("core", cq)
        self._q_sinks = [DropQueue(f"sink:{s.name}", sq) for s in self.sinks]
        self._fe_lane = _Lane("frontend", self.inline_ms / 1000.0)
        self._core_lane = _Lane("core", self.inline_ms / 1000.0)
        self._learn_lane = _Lane("learn", 0.0)  # replays: always on their own thread
        try:
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(self.source)
                model = self._initial_model
                if not isinstance(model, Model):
                    model = await asyncio.to_thread(load_model, model)
                try:
                    self._bundle = await asyncio.to_thread(self._make_bundle, model, self.model_ref)
                except (ValueError, RuntimeError) as e:
                    raise PipelineError(f"model {model.name!r} cannot run on source {self.source.spec}: {e}") from e
                self._core_bundle = self._bundle
                await self.learning.restore_at_start()
                if hasattr(self.source, "n_in"):
                    self.source.n_in = model.core.n_in
                for s in self.sinks:
                    s.attach(self)
                    await stack.enter_async_context(s)
                self._running = True
                self._t_start = time.monotonic()
                log.info("pipeline: %s -> %s -> %s", self.source.spec, model.name,
                         ", ".join(s.name for s in self.sinks) or "no sink")
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._source_stage(), name=f"source:{self.source.spec}")
                        tg.create_task(self._frontend_stage(), name="frontend")
                        tg.create_task(self._core_stage(), name="core")
                        tail = [tg.create_task(self._decision_stage(), name="decision")]
                        for s, q in zip(self.sinks, self._q_sinks):
                            tail.append(tg.create_task(self._sink_stage(s, q), name=f"sink:{s.name}"))
                        tg.create_task(self._join(tail), name="join")
                        tg.create_task(self._metrics_stage(), name="metrics")
                        tg.create_task(self._checkpoint_stage(), name="checkpoint")
                        tg.create_task(self._watchdog(), name="watchdog")
                except BaseExceptionGroup as eg:
                    drain, rest = eg.split(_DrainTimeout)
                    if rest is not None:
                        _raise_first(rest)
                    n = drain.exceptions[0].in_flight
                    self._c["in_flight_dropped"] += n
                    log.warning("shutdown: drain did not finish within %.1f s; %d in-flight item(s) dropped",
                                self.drain_timeout, n)
                if self.learning.checkpoint is not None and self.learning.dirty:   # learnt weights survive
                    try:
                        await self.learning.cmd_save()
                    except CommandError as e:
                        log.error("shutdown: %s", e)
                last = self.metrics_snapshot()
                for s in self.sinks:  # the last metrics go out before the sinks close
                    with contextlib.suppress(RuntimeError, ValueError, TypeError):
                        s.metrics(last)
            # taken again after the sinks closed: what their close dropped (e.g. keyword events an
            # unreachable broker never took, counted by MqttSink.aclose) is in the returned metrics
            self.final_metrics = self.metrics_snapshot()
            return self.final_metrics
        finally:
            self._running = False
            self._fe_lane.shutdown(wait=False)
            self._core_lane.shutdown(wait=False)
            self._learn_lane.shutdown(wait=True)
            self.learning.close()


def _run_keeping(core, ev: Events, checkpoint: bool):
    """Core.run on a block, with the CORE section of the state before it when ``checkpoint``."""
    state = None
    if checkpoint:
        state = next(s.payload for s in _parse_state(core.save_state()) if s.tag == _CORE_TAG)
    return core.run(ev), state


def _raise_first(eg: BaseExceptionGroup) -> None:
    """Re-raise the first leaf of an exception group (clear messages for the CLI)."""
    exc: BaseException = eg
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    raise exc


async def run_pipeline(pipeline: Pipeline, *, signals: bool = True) -> dict:
    """Run with SIGINT/SIGTERM handlers: the first signal drains, a second one cancels."""
    import signal as _signal

    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    count = 0

    def on_signal(signum: int) -> None:
        nonlocal count
        count += 1
        if count == 1:
            log.warning("%s: stopping (again to abort)", _signal.Signals(signum).name)
            pipeline.request_stop()
        else:
            main.cancel()

    installed = []
    if signals:
        for sig in (_signal.SIGINT, _signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, on_signal, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
                pass
    try:
        return await pipeline.run()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
