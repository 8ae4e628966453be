"""Spike events in CSR form: the one representation passed between rooms.

The front end produces it, the core consumes it, datasets and the spike cache
store it, and the MQTT spike-batch codec carries it between devices.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

#: The core's limit of input events in one step (repeats included).
MAX_EVENTS_PER_STEP = 1 << 20
#: Default bound of :meth:`Events.from_raster` on the events of one block (1 GiB of channel ids).
MAX_EVENTS_PER_BLOCK = 1 << 28


class Events(NamedTuple):
    """Input events in CSR form: step t fires ``channels[indptr[t]:indptr[t+1]]``.

    A channel id repeated within a step means several spikes of that channel.
    """

    indptr: np.ndarray    # int64 [n_steps + 1], indptr[0] == 0
    channels: np.ndarray  # int32 [n_events]

    @property
    def n_steps(self) -> int:
        return int(self.indptr.shape[0]) - 1

    @property
    def n_events(self) -> int:
        return int(self.channels.shape[0])

    def to_dense(self, n_channels: int) -> np.ndarray:
        """Spike counts, int32 [n_steps x n_channels]."""
        out = np.zeros((self.n_steps, n_channels), dtype=np.int32)
        steps = np.repeat(np.arange(self.n_steps), np.diff(self.indptr))
        np.add.at(out, (steps, self.channels), 1)
        return out

    @staticmethod
    def empty() -> "Events":
        return Events(np.zeros(1, dtype=np.int64), np.zeros(0, dtype=np.int32))

    @staticmethod
    def concat(parts: list["Events"]) -> "Events":
        """Join consecutive blocks of events into one."""
        parts = [p for p in parts if p.n_steps > 0]
        if not parts:
            return Events.empty()
        if len(parts) == 1:
            return parts[0]
        ind = [np.zeros(1, dtype=np.int64)]
        off = 0
        for p in parts:
            ind.append(p.indptr[1:] + off)
            off += p.n_events
        return Events(np.concatenate(ind), np.concatenate([p.channels for p in parts]))

    @classmethod
    def from_raster(cls, raster: np.ndarray, *, max_events: int | None = None) -> "Events":
        """Dense [T x n_in] raster of non-negative event counts (bool or ints) to CSR.

        The counts are bounded before anything is allocated: at most
        :data:`MAX_EVENTS_PER_STEP` events in a step (the core's limit) and at
        most ``max_events`` (default :data:`MAX_EVENTS_PER_BLOCK`) in all;
        beyond either a ``ValueError`` says which."""
        r = np.asarray(raster)
        if r.ndim != 2:
            raise ValueError(f"raster must be 2-D [T x n_in], got shape {r.shape}")
        if r.dtype == bool:
            r = r.astype(np.uint8)
        if not np.issubdtype(r.dtype, np.integer):
            raise TypeError(f"raster must hold integer counts or bools, got dtype {r.dtype}")
        limit = MAX_EVENTS_PER_BLOCK if max_events is None else int(max_events)
        if r.size:
            lo, hi = int(r.min()), int(r.max())  # exact Python ints whatever the dtype
            if lo < 0:
                raise ValueError("raster counts must be >= 0")
            if hi > MAX_EVENTS_PER_STEP:
                raise ValueError(f"raster count {hi} exceeds {MAX_EVENTS_PER_STEP} events in one step")
        counts = r.astype(np.int64)  # every count fits now; a row sums to at most n_in * 2**20
        per_step = counts.sum(axis=1, dtype=np.int64)
        if per_step.size and int(per_step.max()) > MAX_EVENTS_PER_STEP:
            t = int(per_step.argmax())
            raise ValueError(f"{int(per_step[t])} input events in step {t} (max {MAX_EVENTS_PER_STEP})")
        total = int(per_step.sum(dtype=np.int64))
        if total > limit:
            raise ValueError(f"raster holds {total} events, more than {limit} in one block")
        t_idx, ch = np.nonzero(counts)
        reps = counts[t_idx, ch]
        channels = np.repeat(ch, reps).astype(np.int32)
        indptr = np.zeros(r.shape[0] + 1, np.int64)
        np.cumsum(per_step, out=indptr[1:])
        return cls(indptr, channels)

    @classmethod
    def from_lists(cls, steps: Sequence[Sequence[int]]) -> "Events":
        lens = [len(s) for s in steps]
        indptr = np.zeros(len(steps) + 1, np.int64)
        np.cumsum(lens, out=indptr[1:])
        chans = np.fromiter((c for s in steps for c in s), dtype=np.int64, count=int(indptr[-1]))
        return cls(indptr, as_channels(chans))


def as_channels(ch) -> np.ndarray:
    """Validate channel ids (any integer array-like) and return them as contiguous int32."""
    a = np.asarray(ch)
    if a.ndim != 1:
        raise ValueError(f"channel ids must be a 1-D array, got shape {a.shape}")
    if a.size == 0:
        return np.zeros(0, np.int32)
    if not np.issubdtype(a.dtype, np.integer):
        raise TypeError(f"channel ids must be integers, got dtype {a.dtype}")
    if a.dtype != np.int32:
        lo, hi = int(a.min()), int(a.max())
        if lo < -(2**31) or hi >= 2**31:
            raise ValueError(f"channel id out of range: {lo if lo < 0 else hi}")
        a = a.astype(np.int32)
    return np.ascontiguousarray(a)
