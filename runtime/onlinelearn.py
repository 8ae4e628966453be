"""Learning from a label or a reward that arrives after the word (issue 10): replay.

A user says "that was seven" (a **label**) or "+1 / -1" for the last decision (a **reward**)
after the word was heard and decided.  The rule needs the word's input again, with the target
known, so the runtime keeps the input of the last stretches and **replays** it:

- :class:`ReplayBuffer` keeps the input events of the last ``window_steps`` core steps (whole
  blocks, as the core ran them) and, at block starts, a checkpoint of the core's dynamic state
  (the CORE section of its state blob: currents, membranes, refractory counters, last spikes,
  step counter; 20 + 6 n_hid + 4 n_out bytes) at most every ``checkpoint_steps`` steps.
  Memory is bounded (docs/learning.md, "Late labels: replay"): at most
  ``window_steps + checkpoint_steps + one block`` steps of ``indptr`` (8 bytes a step), at most
  ``max_events`` events (4 bytes each) and one checkpoint per ``checkpoint_steps``.
- :class:`OnlineLearner` owns a second core and a learner (:class:`LearningCore`) for the same
  model.  To learn from stretch ``[a, b]`` (stream steps) it loads the newest checkpoint at or
  before ``a`` into its core with the *current* weights, runs the buffered events up to ``a``
  with learning off (to reach the state the stretch started from), then ``a..b`` with learning
  on and the target of the label or reward, and commits.  The new weights are returned; the
  caller copies them into the live core between two blocks.

Why replay rather than holding eligibility traces until the label arrives: the traces of every
synapse (4 int16 per synapse: 0.24 M synapses x 8 bytes = 1.9 MB for kws-digits) would have to
be kept per candidate stretch and advanced on every step while waiting, although most stretches
are never labelled; the events of 10 s are about 60 kB and cost nothing until a label comes.
Replay costs the learner's time once per label (at learning speed, off the live core's thread).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from . import checkpoint as ckfile, stateblob
from .control import CommandError
from .core import Core
from .events import Events
from .learncore import LearningCore
from .learning import MATRICES, SI_KINDS, LearningConfig, target_modes

log = logging.getLogger(__name__)

__all__ = ["LearningSession", "OnlineLearner", "ReplayBuffer", "ReplayConfig", "ReplayError", "Stretch"]


class ReplayError(ValueError):
    """A stretch cannot be replayed (not buffered any more, or never)."""


@dataclass(frozen=True)
class ReplayConfig:
    """Bounds of the replay buffer and how a label is learnt (docs/learning.md)."""

    window_steps: int = 2500       # input kept: the last 10 s at 4 ms steps
    checkpoint_steps: int = 250    # a core state checkpoint at most this often (at block starts)
    max_events: int = 1 << 20      # buffered input events at most (4 MB)
    passes: int = 1                # replays of the stretch per label / reward

    def __post_init__(self) -> None:
        for name, lo, hi in (("window_steps", 1, 1 << 24), ("checkpoint_steps", 1, 1 << 24),
                             ("max_events", 1, 1 << 28), ("passes", 1, 100)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise ValueError(f"replay {name} must be an int in {lo}..{hi}, got {v!r:.60}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ReplayConfig":
        bad = set(d) - {f.name for f in dataclasses.fields(cls)}
        if bad:
            raise ValueError(f"unknown replay keys {sorted(bad)}")
        return cls(**d)


@dataclass(frozen=True)
class Stretch:
    """A stretch of evidence the decision saw: stream steps ``start..end`` (inclusive), the unit with
    the most evidence (``unit``; index into the model's labels) and whether it fired a keyword."""

    id: int
    start: int
    end: int
    unit: int
    fired: bool
    generation: int = 0   # the model bundle that saw it

    def to_dict(self) -> dict:
        return {"id": self.id, "start": self.start, "end": self.end, "unit": self.unit, "fired": self.fired}


class _Block:
    __slots__ = ("t0", "indptr", "channels", "checkpoint")

    def __init__(self, t0: int, indptr: np.ndarray, channels: np.ndarray, checkpoint: bytes | None):
        self.t0, self.indptr, self.channels, self.checkpoint = t0, indptr, channels, checkpoint

    @property
    def n_steps(self) -> int:
        return self.indptr.shape[0] - 1


class ReplayBuffer:
    """The input events of the last stretches with core-state checkpoints (module docstring).

    Blocks come in stream order (:meth:`add`).  A block that does not start where the previous
    one ended (paused or dropped steps) starts the buffer again: what came before cannot be
    replayed from a state the core really had.  Blocks are evicted in *groups* (a block with a
    checkpoint and the blocks after it up to the next one) from the oldest, while the rest still
    covers ``window_steps``, or while more than ``max_events`` events are buffered.
    """

    def __init__(self, config: ReplayConfig | None = None):
        self.config = config or ReplayConfig()
        self._blocks: deque[_Block] = deque()
        # [blocks, steps, events] of each group (a block with a checkpoint and the blocks after it up
        # to the next one), oldest first: kept as blocks come, so eviction never walks the blocks
        self._groups: deque[list[int]] = deque()
        self._next = None          # stream step right after the newest block
        self._last_ckpt = None     # stream step of the newest checkpoint
        self.steps = 0
        self.events = 0
        self.restarts = 0          # gaps seen (the buffer started again)
        self.evicted_steps = 0

    # -- filling -------------------------------------------------------------------------
    def wants_checkpoint(self, t0: int) -> bool:
        """Whether the block starting at stream step ``t0`` must come with a checkpoint."""
        return (not self._blocks or self._next != t0
                or t0 - self._last_ckpt >= self.config.checkpoint_steps)

    def add(self, t0: int, events: Events, checkpoint: bytes | None) -> None:
        """The block the core ran from stream step ``t0`` and, if :meth:`wants_checkpoint` said so,
        the CORE section of the core's state saved *before* it ran (None otherwise)."""
        indptr = np.asarray(events.indptr, np.int64)
        n = indptr.shape[0] - 1
        if n <= 0:
            return
        if self._blocks and t0 != self._next:     # a gap: what came before is not this state's past
            self.restarts += 1
            self.clear()
        if not self._blocks and checkpoint is None:   # nothing to start a replay from
            self._next = int(t0) + n
            return
        ch = np.asarray(events.channels, np.int32)
        self._blocks.append(_Block(int(t0), indptr.copy(), ch.copy(), checkpoint))
        self._next = int(t0) + n
        if checkpoint is not None:
            self._last_ckpt = int(t0)
            self._groups.append([1, n, ch.shape[0]])
        else:
            g = self._groups[-1]
            g[0], g[1], g[2] = g[0] + 1, g[1] + n, g[2] + ch.shape[0]
        self.steps += n
        self.events += ch.shape[0]
        self._evict()

    def clear(self) -> None:
        self._blocks.clear()
        self._groups.clear()
        self._next = self._last_ckpt = None
        self.steps = self.events = 0

    def _evict(self) -> None:
        while self._blocks:
            nb, st, ev = self._groups[0]
            if len(self._groups) == 1:       # the only group: evict only for the event bound
                if self.events <= self.config.max_events:
                    return
            elif self.steps - st < self.config.window_steps and self.events <= self.config.max_events:
                return
            for _ in range(nb):
                self._blocks.popleft()
            self._groups.popleft()
            self.steps -= st
            self.events -= ev
            self.evicted_steps += st
        if not self._blocks:
            self._last_ckpt = None

    # -- reading ----------------------------------------------------------------------------
    @property
    def first_step(self) -> int | None:
        return self._blocks[0].t0 if self._blocks else None

    @property
    def end_step(self) -> int | None:
        return self._next if self._blocks else None

    @property
    def nbytes(self) -> int:
        return sum(b.indptr.nbytes + b.channels.nbytes + len(b.checkpoint or b"") for b in self._blocks)

    def covering(self, start: int, end: int) -> tuple[int, bytes, Events]:
        """For stream steps ``start..end`` (inclusive): (t_ckpt, CORE section, events of steps
        t_ckpt..end) with the newest checkpoint at or before ``start``; raises ReplayError."""
        if not self._blocks or start < self._blocks[0].t0 or end >= self._next or start > end:
            have = f"{self.first_step}..{self.end_step - 1}" if self._blocks else "nothing"
            raise ReplayError(f"steps {start}..{end} are not in the replay buffer (it holds {have})")
        first = None
        for i, b in enumerate(self._blocks):
            if b.t0 > start:
                break
            if b.checkpoint is not None:
                first = i
        blocks = [b for i, b in enumerate(self._blocks) if i >= first and b.t0 <= end]
        ip, ch, off = [np.zeros(1, np.int64)], [], 0
        for b in blocks:
            ip.append(b.indptr[1:] + off)
            ch.append(b.channels)
            off += b.channels.shape[0]
        indptr = np.concatenate(ip)
        t_ck = blocks[0].t0
        n = end + 1 - t_ck
        indptr = indptr[:n + 1]
        channels = np.concatenate(ch)[:indptr[-1]] if ch else np.zeros(0, np.int32)
        return t_ck, blocks[0].checkpoint, Events(indptr, channels)


def _slice(ev: Events, a: int, b: int) -> Events:
    ip = np.asarray(ev.indptr)
    return Events((ip[a:b + 1] - ip[a]).astype(np.int64), np.asarray(ev.channels)[ip[a]:ip[b]])


class OnlineLearner:
    """Replays buffered stretches through its own core with learning on (module docstring).

    ``params``/``weights``: the live core's per-neuron parameters and weights at the start.
    ``base_weights`` (default: ``weights``) is what :meth:`revert` returns to.
    """

    def __init__(self, config, params, weights: Mapping[str, np.ndarray], lc: LearningConfig | None = None,
                 replay: ReplayConfig | None = None, base_weights: Mapping[str, np.ndarray] | None = None,
                 kernel: str = "fast", importance: Mapping[str, np.ndarray] | None = None):
        self.config_core = config
        self.params = params
        self.lc = lc or LearningConfig()
        self.replay_config = replay or ReplayConfig()
        self.base = {m: np.array(base_weights[m] if base_weights is not None else weights[m], np.int8)
                     for m in MATRICES}
        self._kernel = kernel
        self.core = Core(config, params=params)
        for m in MATRICES:
            self.core.set_weights(m, weights[m])
        self.lcore = LearningCore(self.core, self.lc, kernel=kernel)
        # the base model's synaptic-intelligence importance (Model.importance; docs/learning.md)
        self.base_importance = {m: np.asarray(v, np.int32) for m, v in (importance or {}).items()}
        self._set_importance(self.base_importance)
        self.replays = 0
        self.replayed_steps = 0
        self.consolidations = 0

    def _set_importance(self, imp: Mapping[str, np.ndarray]) -> None:
        if not self.lc.si:
            return
        for m in self.lc.learn:
            if m in imp:
                self.lcore.learner.set_si_state(m, "importance", imp[m])

    def si_state(self) -> dict:
        """{matrix: {prev, omega, importance, anchor}} of the learning matrices (empty with si off)."""
        if not self.lc.si:
            return {}
        L = self.lcore.learner
        return {m: {k: L.si_state(m, k) for k in SI_KINDS} for m in self.lc.learn}

    def consolidate(self) -> dict:
        """The end of a task (synaptic intelligence): what was learnt since the last consolidation
        becomes importance, and the anchors move to the current weights."""
        if not self.lc.si:
            raise ValueError("consolidate: synaptic intelligence is off (learn si=true first)")
        self.lcore.consolidate()
        self.consolidations += 1
        imp = {m: self.lcore.learner.si_state(m, "importance") for m in self.lc.learn}
        return {"consolidations": self.consolidations,
                "importance": {m: {"mean_q16": round(float(v.mean()), 1), "max_q16": int(v.max()) if v.size else 0,
                                   "nonzero": int(np.count_nonzero(v))} for m, v in imp.items()}}

    def weights(self) -> dict[str, np.ndarray]:
        return self.lcore.weights()

    def reconfigure(self, lc: LearningConfig) -> None:
        """A new rule / rates / matrices; accumulators start again from the current weights.
        Synaptic intelligence's importance, anchors and path integral carry over for the matrices
        that learn before and after (a matrix new to learning takes the base importance)."""
        w = self.weights()
        si = self.si_state()
        self.lcore.learner.close()
        self.lc = lc
        self.lcore = LearningCore(self.core, lc, kernel=self._kernel)
        self.lcore.set_weights(w)
        self._set_importance(self.base_importance)
        if lc.si:
            for m, st in si.items():
                if m in lc.learn:
                    for k in ("omega", "importance", "anchor"):
                        self.lcore.learner.set_si_state(m, k, st[k])

    def state(self) -> dict:
        """What a checkpoint keeps: weights, accumulators, the learner's counters and (si on) the
        synaptic-intelligence arrays of the learning matrices."""
        L = self.lcore.learner
        steps, commits = L.counters
        return {"weights": {m: L.weights(m) for m in MATRICES}, "acc": {m: L.acc(m) for m in MATRICES},
                "steps": steps, "commits": commits, "si": self.si_state()}

    def restore(self, weights: Mapping[str, np.ndarray], acc: Mapping[str, np.ndarray], steps: int,
                commits: int, si: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> None:
        """Back to a :meth:`state` (e.g. from a checkpoint): learning continues exactly from there."""
        self.lcore.set_weights(weights)
        for m in MATRICES:
            self.lcore.learner.set_acc(m, acc[m])
        self.lcore.learner.set_counters(steps, commits)
        if self.lc.si:
            for m, st in (si or {}).items():
                if m in self.lc.learn:
                    for k in SI_KINDS:
                        self.lcore.learner.set_si_state(m, k, st[k])

    def revert(self) -> dict[str, np.ndarray]:
        """Back to the base model: its weights (accumulators start again from them) and its importance."""
        self.lcore.set_weights(self.base)
        if self.lc.si:
            for m in self.lc.learn:
                self.lcore.learner.set_si_state(m, "importance", self.base_importance.get(
                    m, np.zeros_like(self.lcore.learner.acc(m))))
        return self.weights()

    def learn(self, t_ckpt: int, checkpoint: bytes, events: Events, start: int, end: int,
              modes: np.ndarray) -> dict[str, np.ndarray]:
        """Replay stream steps ``t_ckpt..end`` (``events``, from :meth:`ReplayBuffer.covering`), learning
        on ``start..end`` with target ``modes``; returns every matrix's weights after the commit.
        With ``passes`` > 1 the same stretch is replayed again from the checkpoint with the new weights."""
        n = np.asarray(events.indptr).shape[0] - 1
        if n != end + 1 - t_ckpt or not t_ckpt <= start <= end:
            raise ReplayError(f"events for {t_ckpt}..{end} have {n} steps")
        lead, word = _slice(events, 0, start - t_ckpt), _slice(events, start - t_ckpt, n)
        for _ in range(self.replay_config.passes):
            w = self.weights()
            wbytes = b"".join(np.ascontiguousarray(w[m], np.int8).tobytes() for m in MATRICES)
            self.lcore.set_learning(False)
            self.core.load_state(stateblob.build([stateblob.Section(stateblob.CORE, True, checkpoint),
                                                  stateblob.Section(stateblob.WGHT, True, wbytes)]))
            if start > t_ckpt:
                self.lcore.run(lead, record=("spikes",))     # to the state the stretch started from
            self.lcore.set_learning(True)
            self.lcore.set_target(modes)
            self.lcore.run(word, record=("spikes",), commit=False)
            self.lcore.set_learning(False)       # flushes the events form's last window of credit
            self.lcore.commit()
            self.replays += 1
            self.replayed_steps += n
        return self.weights()

    def close(self) -> None:
        self.lcore.close()


# ---------------------------------------------------------------------------------------------
# the pipeline's side: commands learn / label / reward / revert / stretches

_LC_ARGS = {"rule": str, "matrices": list, "rate_in": int, "rate_rec": int, "rate_out": int,
            "signal_shift": int, "feedback": str, "weights": str, "target_hi": int, "target_lo": int,
            "surrogate_log2": int, "trace_shift": int, "passes": int, "si": bool, "si_c_log2": int,
            "si_xi_log2": int}


class LearningSession:
    """On-line learning in a running :class:`~spikewire.pipeline.Pipeline` (docs/runtime.md).

    The pipeline calls :meth:`wants_checkpoint` / :meth:`add_block` from its core stage and
    :meth:`add_stretches` from its decision stage (both on the event loop), and hands it a
    function that copies weights into the live core on the core's own thread.  The commands
    (:meth:`register`) run on the loop; a replay runs on the session's own thread with its own
    core and learner, so the live core keeps streaming meanwhile.
    """

    MAX_STRETCHES = 64   # stretch ids remembered (labels may name any of them while buffered)

    def __init__(self, lc: LearningConfig | None = None, replay: ReplayConfig | None = None,
                 checkpoint: str | os.PathLike | None = None):
        self.lc = lc or LearningConfig()
        self._lc_given = lc is not None   # else the model's own learning config, if it has one
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.dirty = False            # weights changed since the last checkpoint
        self.restored: dict | None = None
        self._restore_for = None      # (generation, Checkpoint) whose learner state waits for its learner
        self.replay_config = replay or ReplayConfig()
        self.active = False
        self.buffer = ReplayBuffer(self.replay_config)
        self.stretches: deque[Stretch] = deque(maxlen=self.MAX_STRETCHES)
        self._learner: OnlineLearner | None = None
        self._learner_gen = None
        self._gen = None
        self._lock = None
        self.counts = dict.fromkeys(("labels", "rewards", "replays", "replayed_steps", "refused",
                                     "weights_changed", "reverts", "checkpoints", "checkpoint_errors",
                                     "consolidations"), 0)
        self.last_update: dict | None = None

    # -- hooks called by the pipeline ---------------------------------------------------------
    def wants_checkpoint(self, t0: int) -> bool:
        return self.active and self.buffer.wants_checkpoint(t0)

    def add_block(self, generation: int, t0: int, events: Events, checkpoint: bytes | None) -> None:
        if not self.active:
            return
        if generation != self._gen:          # a new model: its stream state starts here
            self.buffer.clear()
            self._gen = generation
        self.buffer.add(t0, events, checkpoint)

    def add_stretches(self, generation: int, found) -> list[Stretch]:
        """The decider's newly decided stretches (:class:`~spikewire.decision.DecidedStretch`, with their
        ids) are remembered (the newest ``MAX_STRETCHES``)."""
        out = []
        for d in found:
            s = Stretch(int(d.id), int(d.start), int(d.end), int(d.unit), bool(d.fired), generation)
            self.stretches.append(s)
            out.append(s)
        return out

    # -- the commands ----------------------------------------------------------------------------
    def register(self, registry, pipeline) -> None:
        self._pipe = pipeline
        registry.register("learn", self.cmd_learn, optional={"on": bool, **_LC_ARGS},
                          help="learning on/off; rule, rates, matrices, feedback, weights, passes at run time")
        registry.register("label", self.cmd_label, required={"word": str}, optional={"stretch": int},
                          help="that stretch (default: the last) was WORD: replay it with learning on")
        registry.register("reward", self.cmd_reward, required={"value": int}, optional={"stretch": int},
                          help="+1 / -1 for a decision (default: the last keyword)")
        registry.register("revert", self.cmd_revert, help="weights back to the model's")
        registry.register("stretches", self.cmd_stretches, help="the recent stretches of evidence and their ids")
        registry.register("save", self.cmd_save, help="write a checkpoint of the learnt weights now")
        registry.register("consolidate", self.cmd_consolidate,
                          help="synaptic intelligence: the end of a task; what was learnt becomes importance")

    def effective_config(self) -> LearningConfig:
        """What the next label learns with: the config given (constructor or ``learn``), else the
        streaming model's own ``learning`` config, else LearningConfig's defaults."""
        pipe = getattr(self, "_pipe", None)
        if not self._lc_given and pipe is not None:
            b = pipe.learning_bundle()
            if b is not None and b.model.learning is not None:
                return b.model.learning_config()
        return self.lc

    def status(self) -> dict:
        return {"on": self.active, "config": self.effective_config().to_dict(), "passes": self.replay_config.passes,
                "buffer": {"steps": self.buffer.steps, "events": self.buffer.events, "bytes": self.buffer.nbytes,
                           "first_step": self.buffer.first_step, "restarts": self.buffer.restarts},
                "counts": dict(self.counts), "last_update": self.last_update,
                "checkpoint": str(self.checkpoint) if self.checkpoint else None, "restored": self.restored}

    async def _ensure_learner(self, b) -> OnlineLearner:
        """The learner of bundle ``b`` (made from the live core's weights the first time)."""
        if self._learner is None or self._learner_gen != b.generation:
            w = await self._pipe.run_core_thread(lambda: {m: b.core.get_weights(m) for m in MATRICES})
            if self._learner is not None:
                self._learner.close()
            if not self._lc_given and b.model.learning is not None:
                self.lc = b.model.learning_config()
            self._learner = OnlineLearner(b.model.core, b.model.params, w, self.lc, self.replay_config,
                                          base_weights=b.model.weights, importance=b.model.importance)
            self._learner_gen = b.generation
            pending, self._restore_for = self._restore_for, None
            if pending is not None and pending[0] == b.generation and pending[1].acc is not None:
                ck = pending[1]
                await self._pipe.run_learn_thread(self._learner.restore, ck.learner_weights, ck.acc, ck.steps,
                                                  ck.commits, ck.si)
        return self._learner

    # -- reload: learnt weights are never lost by accident ---------------------------------------
    async def before_reload(self, discard: bool = False) -> dict:
        """Before a reload swaps the model: unsaved learnt weights are checkpointed, or (without a
        checkpoint file) the reload is refused unless ``discard``."""
        if not self.dirty:
            return {}
        if self.checkpoint is not None:
            async with self._lock_():
                return {"saved": (await self.save())["path"]}
        if discard:
            self.dirty = False
            return {"discarded": True}
        raise CommandError("reload: the learnt weights are not saved (no checkpoint file): 'snapshot' them, "
                           "run with --checkpoint, or reload with discard=true")

    async def onto_new_bundle(self, bundle) -> dict:
        """A reloaded bundle (not streaming yet) takes the checkpoint learnt from the same model file."""
        if self.checkpoint is None:
            return {}
        c = bundle.model.core
        ck, path, refused = await asyncio.to_thread(ckfile.read_newest, self.checkpoint, n_in=c.n_in, n_hid=c.n_hid,
                                                    n_out=c.n_out, base=ckfile.model_id(bundle.model))
        if ck is None:
            return {}
        await asyncio.to_thread(_apply, bundle.core, ck.weights)   # nobody steps this core before it is adopted
        self._restore_for = (bundle.generation, ck)
        return {"restored": str(path)}

    # -- checkpoints (runtime/checkpoint.py) -----------------------------------------------------
    async def restore_at_start(self) -> None:
        """Take the newest good checkpoint (if any) into the live core and the learner."""
        if self.checkpoint is None:
            return
        b = self._pipe.learning_bundle()
        c = b.model.core
        ck, path, refused = await asyncio.to_thread(ckfile.read_newest, self.checkpoint, n_in=c.n_in,
                                                    n_hid=c.n_hid, n_out=c.n_out, base=ckfile.model_id(b.model))
        for r in refused:
            log.warning("checkpoint refused: %s", r)
        self.restored = {"path": str(path) if path else None, "refused": refused}
        if ck is None:
            return
        self.lc = ck.learning
        self._lc_given = True
        self.replay_config = dataclasses.replace(self.replay_config, passes=ck.meta["passes"])
        self.buffer.config = self.replay_config
        await self._pipe.run_core_thread(_apply, b.core, ck.weights)
        learner = await self._ensure_learner(b)
        if ck.acc is not None:
            await self._pipe.run_learn_thread(learner.restore, ck.learner_weights, ck.acc, ck.steps, ck.commits,
                                              ck.si)
        for k, v in ck.meta.get("counts", {}).items():
            if k in self.counts and isinstance(v, int) and not isinstance(v, bool):
                self.counts[k] = v
        log.info("learnt weights restored from %s", path)

    async def save(self) -> dict:
        """Write a checkpoint now (atomically; the previous one is kept as NAME.prev)."""
        if self.checkpoint is None:
            raise CommandError("save: no checkpoint file configured (Pipeline checkpoint=..., --checkpoint)")
        b = self._pipe.learning_bundle()
        blob = await self._pipe.run_core_thread(b.core.save_state)
        state = None
        if self._learner is not None and self._learner_gen == b.generation:
            state = await self._pipe.run_learn_thread(self._learner.state)
        data = ckfile.encode(blob, model_name=b.name, base=ckfile.model_id(b.model), lc=self.lc,
                                 passes=self.replay_config.passes, learner=state, counts=self.counts)
        try:
            await asyncio.to_thread(ckfile.write_atomic, self.checkpoint, data)
        except OSError as e:
            self.counts["checkpoint_errors"] += 1
            raise CommandError(f"save: cannot write {self.checkpoint}: {e}") from None
        self.dirty = False
        self.counts["checkpoints"] += 1
        return {"path": str(self.checkpoint), "bytes": len(data)}

    async def cmd_save(self) -> dict:
        async with self._lock_():
            return await self.save()

    def _lock_(self) -> asyncio.Lock:
        if self._lock is None:   # made on first use, inside the running loop
            self._lock = asyncio.Lock()
        return self._lock

    async def cmd_learn(self, on: bool | None = None, **changes) -> dict:
        async with self._lock_():
            if changes:
                if not self._lc_given:
                    mlc = self._pipe.learning_bundle().model.learning_config()
                    self.lc = mlc or self.lc
                d = self.lc.to_dict()
                passes = changes.pop("passes", None)
                if "matrices" in changes:
                    d["learn"] = changes.pop("matrices")
                d.update(changes)
                try:
                    lc = LearningConfig.from_dict(d)
                    rc = dataclasses.replace(self.replay_config, passes=passes) if passes is not None \
                        else self.replay_config
                except (TypeError, ValueError) as e:
                    raise CommandError(f"learn: {e}") from None
                self.lc, self.replay_config = lc, rc
                self._lc_given = True
                self.buffer.config = rc
                if self._learner is not None:
                    self._learner.replay_config = rc
                    await self._pipe.run_learn_thread(self._learner.reconfigure, lc)
            if on is not None and on != self.active:
                self.active = on
                if not on:
                    self.buffer.clear()
            return self.status()

    async def si_importance(self) -> dict | None:
        """The learner's synaptic-intelligence importance per learning matrix (None with si off or no
        learner yet), e.g. to write it into an adapted model file."""
        b = self._pipe.learning_bundle()
        if self._learner is None or self._learner_gen != b.generation or not self.lc.si:
            return None
        st = await self._pipe.run_learn_thread(self._learner.si_state)
        return {m: v["importance"] for m, v in st.items()}

    async def cmd_consolidate(self) -> dict:
        async with self._lock_():
            if not self.effective_config().si:
                raise CommandError("consolidate: synaptic intelligence is off (send learn with si=true first)")
            b = self._pipe.learning_bundle()
            learner = await self._ensure_learner(b)
            out = await self._pipe.run_learn_thread(learner.consolidate)
            self.counts["consolidations"] += 1
            self.dirty = True
            return out

    def _find(self, stretch: int | None, fired_only: bool) -> Stretch:
        pool = [s for s in self.stretches if s.fired or not fired_only]
        if stretch is None:
            if not pool:
                raise CommandError("no stretch to name yet" if not fired_only else "no keyword to reward yet")
            return pool[-1]
        for s in self.stretches:
            if s.id == stretch:
                if fired_only and not s.fired:
                    raise CommandError(f"stretch {stretch} fired no keyword: nothing to reward (send a label)")
                return s
        raise CommandError(f"unknown stretch {stretch} (known: "
                           f"{', '.join(str(s.id) for s in self.stretches) or 'none'})")

    async def _learn_from(self, what: str, st: Stretch, modes: np.ndarray, info: dict) -> dict:
        b = self._pipe.learning_bundle()
        if st.generation != b.generation:
            raise CommandError(f"{what}: stretch {st.id} was heard by an earlier model")
        try:
            t_ck, ck, ev = self.buffer.covering(st.start, st.end)
        except ReplayError as e:
            self.counts["refused"] += 1
            raise CommandError(f"{what}: stretch {st.id}: {e}") from None
        await self._ensure_learner(b)
        t = time.perf_counter()
        new = await self._pipe.run_learn_thread(self._learner.learn, t_ck, ck, ev, st.start, st.end, modes)
        dt = time.perf_counter() - t
        changed = await self._pipe.run_core_thread(_apply, b.core, new)
        n = int(ev.indptr.shape[0] - 1)
        self.counts["replays"] += self.replay_config.passes
        self.counts["replayed_steps"] += n * self.replay_config.passes
        self.counts["weights_changed"] += changed
        self.dirty = True
        self.last_update = {"stretch": st.id, **info, "steps": st.end + 1 - st.start, "replayed_steps": n,
                            "weights_changed": changed, "replay_ms": round(dt * 1000, 1)}
        return self.last_update

    async def cmd_label(self, word: str, stretch: int | None = None) -> dict:
        async with self._lock_():
            if not self.active:
                self.counts["refused"] += 1
                raise CommandError("label: learning is off (send learn on first)")
            b = self._pipe.learning_bundle()
            labels = b.model.labels
            if word not in labels:
                self.counts["refused"] += 1
                raise CommandError(f"label: unknown word {word!r:.60} (the model knows {', '.join(labels)})")
            try:
                st = self._find(stretch, fired_only=False)
            except CommandError as e:
                self.counts["refused"] += 1
                raise CommandError(f"label: {e}") from None
            out = await self._learn_from("label", st, target_modes(len(labels), label=labels.index(word)),
                                         {"label": word})
            self.counts["labels"] += 1
            return out

    async def cmd_reward(self, value: int, stretch: int | None = None) -> dict:
        async with self._lock_():
            if value not in (1, -1):
                raise CommandError(f"reward: value must be +1 or -1, got {value}")
            if not self.active:
                self.counts["refused"] += 1
                raise CommandError("reward: learning is off (send learn on first)")
            b = self._pipe.learning_bundle()
            try:
                st = self._find(stretch, fired_only=True)
            except CommandError as e:
                self.counts["refused"] += 1
                raise CommandError(f"reward: {e}") from None
            modes = target_modes(len(b.model.labels), reward=value, decided=st.unit)
            out = await self._learn_from("reward", st, modes, {"reward": value, "word": b.model.labels[st.unit]})
            self.counts["rewards"] += 1
            return out

    async def cmd_revert(self) -> dict:
        async with self._lock_():
            b = self._pipe.learning_bundle()
            base = {m: b.model.weights[m] for m in MATRICES}
            if self._learner is not None and self._learner_gen == b.generation:
                await self._pipe.run_learn_thread(self._learner.revert)
            changed = await self._pipe.run_core_thread(_apply, b.core, base)
            self.counts["reverts"] += 1
            self.dirty = self.checkpoint is not None   # the checkpoint must forget what was learnt, too
            return {"model": b.name, "weights_changed": changed}

    def cmd_stretches(self) -> dict:
        return {"stretches": [s.to_dict() for s in self.stretches],
                "buffered": None if self.buffer.first_step is None
                else [self.buffer.first_step, self.buffer.end_step - 1]}

    def close(self) -> None:
        if self._learner is not None:
            self._learner.close()
            self._learner = None


def _apply(core: Core, weights: Mapping[str, np.ndarray]) -> int:
    """Copy weights into a core (on its own thread); returns how many weights changed."""
    n = 0
    for m, w in weights.items():
        old = core.get_weights(m)
        d = int(np.count_nonzero(old != w))
        if d:
            core.set_weights(m, w)
        n += d
    return n
