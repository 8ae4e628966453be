"""Checkpoints of learnt weights and learning state (issue 10, "Safe state"; docs/learning.md).

A checkpoint is a core state blob, version 2 (runtime/stateblob.py: header, tagged sections,
CRC-32), so ``Core.load_state`` reads it as it is.  Its required sections are the live core's
own (CORE, WGHT: the learnt weights); the learner's state travels in optional sections that a
core skips:

======  =========================================================================
LCFG    JSON (UTF-8): ``schema`` (1), ``model`` (name), ``base`` (:func:`model_id` of the
        model file the learning started from), ``learning`` (LearningConfig), ``passes``,
        ``steps`` and ``commits`` (the learner's counters; commits seed stochastic rounding),
        ``counts`` (labels, rewards, ...), ``t_unix``
LACC    the learner's accumulators, int32 little-endian: in, rec, out (row-major)
LWGT    the learner's weights, int8: in, rec, out
LSIS    with synaptic intelligence on (``learning.si``): for each learning matrix (in, rec, out
        order) its prev, omega, importance and anchor, int32 little-endian (docs/learning.md
        "Consolidation")
======  =========================================================================

Writing is atomic (:func:`write_atomic`): a temporary file in the same folder is written and
fsynced, the current checkpoint becomes ``NAME.prev``, the temporary file is renamed to
``NAME`` and the folder is fsynced.  A crash at any point leaves ``NAME`` or ``NAME.prev``
whole; :func:`read_newest` takes ``NAME`` if it is good, else ``NAME.prev``, and says why it
refused a file (CRC, framing, sizes, schema, another model).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np

from . import stateblob
from .learning import ACC_MAX, MATRICES, SI_KINDS, SI_MAX, THETA_MAX, LearningConfig
from .safefile import FileTooLargeError, read_regular
from .wire import PayloadError, decode_json_object

SCHEMA = 1
LCFG, LACC, LWGT, LSIS = "LCFG", "LACC", "LWGT", "LSIS"
MAX_COMMITS = 1 << 24
MAX_LCFG_BYTES = 1 << 16   # the LCFG JSON the writer makes is < 2 kB


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (corrupt, another model, another schema)."""


class Checkpoint(NamedTuple):
    core_blob: bytes             # CORE + WGHT only: what Core.load_state reads
    weights: dict                # the live core's weights (WGHT), int8 per matrix
    meta: dict                   # LCFG
    learning: LearningConfig
    learner_weights: dict | None
    acc: dict | None             # int32 per matrix
    steps: int
    commits: int
    si: dict | None = None       # {matrix: {prev, omega, importance, anchor}} with learning.si


def model_id(model) -> str:
    """sha256 of what a checkpoint must match: sizes, labels and the model file's weights."""
    h = hashlib.sha256()
    c = model.core
    h.update(json.dumps([c.n_in, c.n_hid, c.n_out, model.labels]).encode())
    for m in MATRICES:
        h.update(np.ascontiguousarray(model.weights[m], np.int8).tobytes())
    return h.hexdigest()


def _shapes(n_in: int, n_hid: int, n_out: int) -> dict:
    return {"in": (n_in, n_hid), "rec": (n_hid, n_hid), "out": (n_hid, n_out)}


def encode(core_blob: bytes, *, model_name: str, base: str, lc: LearningConfig, passes: int,
           learner: Mapping[str, Any] | None, counts: Mapping[str, int] | None = None) -> bytes:
    """A checkpoint blob: the live core's state blob plus LCFG (and LACC, LWGT when ``learner`` is given:
    ``{"weights", "acc", "steps", "commits"}`` from ``OnlineLearner.state()``)."""
    meta = {"schema": SCHEMA, "model": model_name, "base": base, "learning": lc.to_dict(), "passes": int(passes),
            "steps": int(learner["steps"]) if learner else 0, "commits": int(learner["commits"]) if learner else 0,
            "counts": dict(counts or {}), "t_unix": round(time.time(), 3)}
    extra = [stateblob.Section(LCFG, False, json.dumps(meta, sort_keys=True).encode())]
    if learner is not None:
        extra.append(stateblob.Section(LACC, False, b"".join(
            np.ascontiguousarray(learner["acc"][m], "<i4").tobytes() for m in MATRICES)))
        extra.append(stateblob.Section(LWGT, False, b"".join(
            np.ascontiguousarray(learner["weights"][m], np.int8).tobytes() for m in MATRICES)))
        if lc.si:
            si = learner.get("si") or {}
            if set(si) != set(lc.learn):
                raise ValueError(f"checkpoint: synaptic intelligence state for {sorted(si)}, learning {list(lc.learn)}")
            extra.append(stateblob.Section(LSIS, False, b"".join(
                np.ascontiguousarray(si[m][k], "<i4").tobytes() for m in lc.learn for k in SI_KINDS)))
    return stateblob.with_sections(core_blob, extra)


def decode(blob: bytes, *, n_in: int, n_hid: int, n_out: int, base: str | None = None) -> Checkpoint:
    """Check and read a checkpoint for a core of these sizes (and, with ``base``, of that model)."""
    try:
        secs = {s.tag: s for s in stateblob.parse(blob)}
    except stateblob.StateBlobError as e:
        raise CheckpointError(str(e)) from None
    if stateblob.CORE not in secs or stateblob.WGHT not in secs or LCFG not in secs:
        raise CheckpointError("not a learning checkpoint (CORE, WGHT or LCFG missing)")
    unknown = [t for t, s in secs.items() if s.required and t not in (stateblob.CORE, stateblob.WGHT)]
    if unknown:
        raise CheckpointError(f"checkpoint has required sections this version does not know: {unknown}")
    try:
        core = stateblob.decode_core(secs[stateblob.CORE].payload)
    except stateblob.StateBlobError as e:
        raise CheckpointError(str(e)) from None
    if (core.n_in, core.n_hid, core.n_out) != (n_in, n_hid, n_out):
        raise CheckpointError(f"checkpoint is of a {core.n_in}-{core.n_hid}-{core.n_out} core, "
                              f"this one is {n_in}-{n_hid}-{n_out}")
    shapes = _shapes(n_in, n_hid, n_out)
    sizes = [int(np.prod(shapes[m])) for m in MATRICES]

    def split(raw: bytes, dtype, name: str) -> dict:
        item = np.dtype(dtype).itemsize
        if len(raw) != sum(sizes) * item:
            raise CheckpointError(f"checkpoint section {name} has {len(raw)} bytes, expected {sum(sizes) * item}")
        a = np.frombuffer(raw, dtype)
        out, off = {}, 0
        for m, n in zip(MATRICES, sizes):
            out[m] = a[off:off + n].reshape(shapes[m]).astype(np.dtype(dtype).newbyteorder("="))
            off += n
        return out

    weights = split(secs[stateblob.WGHT].payload, np.int8, "WGHT")
    try:  # bounded in size and nesting before parsing (the CRC proves integrity, not a friendly writer)
        meta = decode_json_object(secs[LCFG].payload, "checkpoint LCFG", max_bytes=MAX_LCFG_BYTES)
    except PayloadError as e:
        raise CheckpointError(str(e)) from None
    if meta.get("schema") != SCHEMA:
        raise CheckpointError(f"checkpoint schema {meta.get('schema')!r:.20} is not {SCHEMA}")
    counts = meta.get("counts", {})
    if not isinstance(counts, dict) or not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63
                                               for v in counts.values()):
        raise CheckpointError("checkpoint LCFG counts must be an object of non-negative integers")
    if base is not None and meta.get("base") != base:
        raise CheckpointError(f"checkpoint was learnt from another model ({meta.get('model')!r:.70}, "
                              f"base {str(meta.get('base'))[:12]}...)")
    try:
        lc = LearningConfig.from_dict(meta["learning"])
        passes, steps, commits = meta["passes"], meta["steps"], meta["commits"]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint LCFG: {e}") from None
    for name, v, hi in (("passes", passes, 100), ("steps", steps, 2**62), ("commits", commits, MAX_COMMITS - 1)):
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= hi:
            raise CheckpointError(f"checkpoint {name} must be an int in 0..{hi}, got {v!r:.40}")
    lw = acc = None
    if (LACC in secs) != (LWGT in secs):
        raise CheckpointError("checkpoint has one of LACC / LWGT without the other")
    if LACC in secs:
        acc = split(secs[LACC].payload, "<i4", "LACC")
        lw = split(secs[LWGT].payload, np.int8, "LWGT")
        lim = ACC_MAX[lc.weights]
        for m in MATRICES:
            if acc[m].size and np.abs(acc[m].astype(np.int64)).max() > lim:
                raise CheckpointError(f"checkpoint accumulator {m!r} is outside +-{lim}")
    for d in (weights, lw):
        for m in MATRICES if d is not None else ():
            if d[m].size and np.abs(d[m].astype(np.int64)).max() > 63:
                raise CheckpointError(f"checkpoint weight {m!r} outside -63..63")
    si = None
    if LSIS in secs and not (lc.si and LACC in secs):
        raise CheckpointError("checkpoint has LSIS without synaptic intelligence on and LACC")
    if lc.si and LACC in secs:
        if LSIS not in secs:
            raise CheckpointError("checkpoint learns with synaptic intelligence but has no LSIS section")
        raw = secs[LSIS].payload
        want = sum(int(np.prod(shapes[m])) for m in lc.learn) * 4 * len(SI_KINDS)
        if len(raw) != want:
            raise CheckpointError(f"checkpoint section LSIS has {len(raw)} bytes, expected {want}")
        a = np.frombuffer(raw, "<i4").astype(np.int32)
        si, off = {}, 0
        bounds = {"prev": (-ACC_MAX[lc.weights], ACC_MAX[lc.weights]), "omega": (-SI_MAX, SI_MAX),
                  "importance": (0, SI_MAX), "anchor": (-THETA_MAX[lc.weights], THETA_MAX[lc.weights])}
        for m in lc.learn:
            n = int(np.prod(shapes[m]))
            si[m] = {}
            for k in SI_KINDS:
                v = a[off:off + n].reshape(shapes[m])
                off += n
                lo, hi = bounds[k]
                if v.size and (int(v.min()) < lo or int(v.max()) > hi):
                    raise CheckpointError(f"checkpoint si {k} of {m!r} outside {lo}..{hi}")
                si[m][k] = v
    core_blob = stateblob.build([secs[stateblob.CORE], secs[stateblob.WGHT]])
    return Checkpoint(core_blob, weights, meta, lc, lw, acc, steps, commits, si)


def prev_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_name(p.name + ".prev")


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; the file it replaces becomes ``path.prev``."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    if p.exists():
        os.replace(p, prev_path(p))
    os.replace(tmp, p)
    dfd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


MAX_BYTES = 1 << 28   # a checkpoint larger than this is not read (the largest core's is ~ 0.3 GB)


def read_newest(path: str | os.PathLike, **check) -> tuple[Checkpoint | None, Path | None, list[str]]:
    """The newest good checkpoint: ``path``, else ``path.prev``.  Returns (checkpoint, its path,
    reasons the others were refused); (None, None, reasons) when neither is good or exists."""
    refused = []
    for p in (Path(path), prev_path(path)):
        try:  # a regular file (a FIFO or /dev/zero is refused at once) of at most MAX_BYTES, before reading
            data = read_regular(p, MAX_BYTES)
        except FileNotFoundError:
            continue
        except FileTooLargeError as e:
            refused.append(f"{p}: {e.strerror}: more than a checkpoint can be")
            continue
        except OSError as e:
            refused.append(f"{p}: {e.strerror or e}")
            continue
        try:
            return decode(data, **check), p, refused
        except CheckpointError as e:
            refused.append(f"{p}: {e}")
    return None, None, refused

