"""A core that learns while it runs: :class:`LearningCore` = a C :class:`Core` + a C :class:`Learner`.

One :meth:`LearningCore.run` is one *stretch*: the core runs the block in one C call
(``Core.run_ex``, recording what the rule needs), then, if learning is on, the learner steps
over the same block in one C call and its new weights are committed to the core.  Inside a
stretch the core's weights do not change, so the forward pass is the unchanged core (docs/learning.md).

Semantics (the same as :class:`spikewire.learning.ReferenceLearningCore`, its numpy spec):

- learning is off after construction; :meth:`set_learning` switches it.  Switching it on
  starts the traces at zero; the learner's "previous spikes" and "refractory at the start"
  are then the core's own (read from its state), so learning can start in the middle of a stream.
- while learning is off the core runs alone (its speed), the traces are not updated and the
  accumulators are kept.
- ``commit=True`` (default) commits at the end of every learning stretch; with ``commit=False``
  the updates wait in the accumulators until :meth:`commit`.
- :meth:`reset` resets the core and the traces (not the accumulators or weights).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from . import stateblob
from .core import RUN_FIELDS, Core, RunOutputEx
from .events import Events
from .learner import Learner
from .learning import MATRICES, LearningConfig

_NEEDED = ("spikes", "hid_v_pre", "hid_ref", "out_v")


class LearningCore:
    """A :class:`Core` and a :class:`Learner` stepped together, stretch by stretch.

    ``core`` keeps its weights; the learner starts from them.  ``kernel`` picks the learner's
    C kernel ("fast" or "reference").
    """

    def __init__(self, core: Core, lc: LearningConfig, kernel: str = "fast"):
        if not isinstance(core, Core):
            raise TypeError(f"core must be a Core, got {type(core).__name__}")
        self.core = core
        self.config = core.config
        hid, out = core.params
        self.learner = Learner(core.config, hid, out, lc, {m: core.get_weights(m) for m in MATRICES})
        self.learner.kernel = kernel
        self.lc = lc
        self._learning = False
        self._refr = np.zeros(core.config.n_hid, np.uint8)   # refractory at the start of the next step
        self._steps = core.steps                              # the core's step counter we expect
        self.stretches = 0        # learning stretches run
        self.commits = 0          # commits made into the core

    # -- switches ------------------------------------------------------------------
    @property
    def learning(self) -> bool:
        return self._learning

    def set_learning(self, on: bool) -> None:
        """Learning on (traces start at zero, from the core's current state) or off.

        Switching off ends the learning stretch: the events form's pending steps are credited now
        (``Learner.flush``), so a stretch's last window is not lost to the next ``reset_traces``;
        commit after switching off to include them.  The traces form has nothing pending."""
        on = bool(on)
        if on and not self._learning:
            self.learner.reset_traces()
            self._sync_from_core()
        elif not on and self._learning:
            self.learner.flush()
        self._learning = on

    def set_target(self, modes: np.ndarray) -> None:
        """Per readout unit TARGET_HI / TARGET_LO / TARGET_NONE (``learning.target_modes``)."""
        self.learner.set_target(modes)

    def _sync_from_core(self) -> None:
        """The learner's previous spikes and the refractory flags from the core's saved state."""
        for s in stateblob.parse(self.core.save_state()):
            if s.tag == stateblob.CORE:
                cs = stateblob.decode_core(s.payload)
                self.learner.set_last_spikes(cs.z)
                self._refr = (cs.h_ref > 0).astype(np.uint8)
                self._steps = cs.steps
                return
        raise RuntimeError("core state has no CORE section")  # cannot happen: the C core writes one

    # -- running ------------------------------------------------------------------------
    def run(self, events, record=RUN_FIELDS, commit: bool = True) -> RunOutputEx:
        """One stretch: the core over ``events`` (as ``Core.run_ex``) and, if learning is on, the
        learner over the same steps, then a commit into the core (``commit=True``).

        Returns the core's outputs (the fields in ``record``, plus those the rule needs when learning)."""
        if not self._learning:
            return self.core.run_ex(events, record=record)
        if self.core.steps != self._steps:   # somebody stepped, reset or loaded the core directly
            self._sync_from_core()
        fields = tuple(dict.fromkeys(tuple(record) + _NEEDED))
        out = self.core.run_ex(events, record=fields)
        T = out.spikes.shape[0]
        self._steps += T
        if T == 0:
            return out
        ev = self.core._events(events, None)
        refr = np.empty_like(out.hid_ref)
        refr[0] = self._refr
        refr[1:] = out.hid_ref[:-1] > 0
        self.learner.run(Events(ev[1], ev[2]), out.spikes, out.hid_v_pre, refr, out.out_v)
        self._refr = (out.hid_ref[-1] > 0).astype(np.uint8)
        self.stretches += 1
        if commit:
            self.commit()
        return out

    def commit(self) -> dict[str, np.ndarray]:
        """Accumulators -> weights of every learning matrix, copied into the core (and returned)."""
        new = self.learner.commit()
        for m, w in new.items():
            self.core.set_weights(m, w)
        self.commits += 1
        return new

    def consolidate(self) -> None:
        """Synaptic intelligence: the end of a task (docs/learning.md "Consolidation"); needs si on."""
        self.learner.consolidate()

    # -- state -----------------------------------------------------------------------------
    def reset(self) -> None:
        """Core to rest and traces to zero; weights and accumulators are kept."""
        self.core.reset()
        self.learner.reset_traces()
        self._refr = np.zeros(self.config.n_hid, np.uint8)
        self._steps = 0

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """New weights for core and learner (the accumulators of those matrices start again from them)."""
        for m, w in weights.items():
            self.core.set_weights(m, w)
            self.learner.set_weights(m, w)

    def weights(self) -> dict[str, np.ndarray]:
        return {m: self.core.get_weights(m) for m in MATRICES}

    def close(self) -> None:
        self.learner.close()
        self.core.close()
