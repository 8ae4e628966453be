"""The speaker-disjoint evaluation protocol (issue 11).

Recipes are chosen on whole held-out speakers, never on a test split:

* **Validation speakers.**  For every speaker pool other than FSDD (a pool is
  the set of people of one or more :data:`~spikewire.tools.datasets.CORPORA`
  entries; Speech Commands digits and words are one pool), the speakers are
  ranked by ``SHA-256(f"{seed}:{pool}:{speaker}")`` (hex digest, ties by name)
  and the first ``round(n * fraction)`` of the ``n`` speakers (default a
  third, seed 0) are the validation speakers.  The choice depends only on the
  set of speaker ids: adding or removing files of known speakers changes
  nothing, and adding one new speaker to a pool moves at most one old speaker.
  Every corpus of a pool uses the same choice, so a validation speaker's
  digits and words are all on the validation side.
* **Folds.**  ``validation``: test = every utterance of a validation speaker,
  train = everything else (all of FSDD included).  ``loso-<speaker>`` for each
  FSDD speaker: test = that speaker's FSDD files, train = everything else
  (all other corpora, validation speakers included).  Train and test of a fold
  never share a speaker.

``python -m spikewire.tools.protocol [DATA_ROOT]`` prints the per-corpus
counts of the shared data (default ``$SPIKEWIRE_DATA`` or ``../shared/data``).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from .datasets import CORPORA, Corpus, Utterance, corpus, load_corpus

__all__ = [
    "FSDD_POOL",
    "Fold",
    "corpus_counts",
    "folds",
    "format_counts",
    "speaker_rank_key",
    "validation_speakers",
]

FSDD_POOL = "fsdd"
DEFAULT_FRACTION = 1 / 3


def speaker_rank_key(speaker: str, pool: str, seed: int = 0) -> str:
    """The SHA-256 hex digest that orders the speakers of ``pool`` for ``seed``."""
    return hashlib.sha256(f"{seed}:{pool}:{speaker}".encode("utf-8")).hexdigest()


def _check_seed_and_fraction(seed: int, fraction: float) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not (isinstance(fraction, (int, float)) and 0.0 <= fraction <= 1.0):
        raise ValueError(f"fraction must be in 0..1, got {fraction!r}")


def validation_speakers(speakers: Iterable[str], pool: str, seed: int = 0,
                        fraction: float = DEFAULT_FRACTION) -> frozenset:
    """The validation speakers of one pool: the first ``round(n * fraction)`` by :func:`speaker_rank_key`."""
    _check_seed_and_fraction(seed, fraction)
    unique = set(speakers)
    if None in unique:
        raise ValueError(f"pool {pool!r}: an utterance without a speaker id cannot be split by speaker")
    ranked = sorted(unique, key=lambda s: (speaker_rank_key(s, pool, seed), s))
    return frozenset(ranked[: round(len(ranked) * fraction)])


def _pool_of(u: Utterance) -> str:
    if u.corpus is None:
        raise ValueError(f"{u.path}: utterance has no corpus; load it with datasets.load_corpus")
    return corpus(u.corpus).pool


def _validation_set(utterances: Sequence[Utterance], seed: int, fraction: float) -> set:
    by_pool: dict[str, set] = {}
    for u in utterances:
        by_pool.setdefault(_pool_of(u), set()).add(u.speaker)
    chosen = set()
    for pool, speakers in by_pool.items():
        if pool != FSDD_POOL:
            chosen |= {(pool, s) for s in validation_speakers(speakers, pool, seed, fraction)}
    return chosen


@dataclass(frozen=True)
class Fold:
    """One train/test division; ``test_speakers`` are (pool, speaker) pairs."""

    name: str
    train: tuple
    test: tuple
    test_speakers: frozenset


def folds(utterances: Iterable[Utterance], seed: int = 0, fraction: float = DEFAULT_FRACTION) -> list[Fold]:
    """The ``validation`` fold, then ``loso-<speaker>`` for each FSDD speaker (sorted).

    ``utterances`` come from :func:`~spikewire.tools.datasets.load_corpus`
    (they need ``corpus`` and ``speaker``).  Raises ValueError if any lacks them.
    """
    utterances = list(utterances)
    val = _validation_set(utterances, seed, fraction)
    keyed = [((_pool_of(u), u.speaker), u) for u in utterances]
    out = [_fold("validation", keyed, frozenset(val))]
    for s in sorted({k[1] for k, _ in keyed if k[0] == FSDD_POOL}):
        out.append(_fold(f"loso-{s}", keyed, frozenset({(FSDD_POOL, s)})))
    return out


def _fold(name: str, keyed: list, test_speakers: frozenset) -> Fold:
    return Fold(name,
                tuple(u for k, u in keyed if k not in test_speakers),
                tuple(u for k, u in keyed if k in test_speakers),
                test_speakers)


def default_data_root() -> Path:
    """``$SPIKEWIRE_DATA`` if set and non-empty, else ``../shared/data``."""
    return Path(os.environ.get("SPIKEWIRE_DATA") or "../shared/data")


def corpus_counts(data_root: Union[str, "os.PathLike[str]"], seed: int = 0,
                  fraction: float = DEFAULT_FRACTION,
                  corpora: Optional[Sequence[Corpus]] = None) -> list[dict]:
    """Per-corpus counts: files and speakers, in total and on the validation side."""
    corpora = CORPORA if corpora is None else corpora
    loaded = {c.name: load_corpus(c, data_root) for c in corpora}
    val = _validation_set([u for us in loaded.values() for u in us], seed, fraction)
    rows = []
    for c in corpora:
        us = loaded[c.name]
        v = [u for u in us if (c.pool, u.speaker) in val]
        rows.append({"corpus": c.name, "kind": c.kind, "licence": c.licence, "pool": c.pool,
                     "files": len(us), "speakers": len({u.speaker for u in us}),
                     "rates": sorted({u.rate for u in us}),
                     "validation_files": len(v), "validation_speakers": len({u.speaker for u in v})})
    return rows


def format_counts(rows: Sequence[dict]) -> str:
    """A plain-text table of :func:`corpus_counts` rows."""
    head = f"{'corpus':<20} {'kind':<7} {'files':>6} {'speakers':>8} {'val files':>9} {'val spk':>7}  rates (Hz)"
    lines = [head]
    for r in rows:
        lines.append(f"{r['corpus']:<20} {r['kind']:<7} {r['files']:>6} {r['speakers']:>8} "
                     f"{r['validation_files']:>9} {r['validation_speakers']:>7}  "
                     f"{', '.join(str(x) for x in r['rates'])}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m spikewire.tools.protocol", description=__doc__.split("\n")[0])
    ap.add_argument("data_root", nargs="?", type=Path, default=None,
                    help="folder holding the corpora (default $SPIKEWIRE_DATA or ../shared/data)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    root = args.data_root or default_data_root()
    if not root.is_dir():
        print(f"error: data root {str(root)!r} does not exist", file=sys.stderr)
        return 2
    if args.seed < 0:
        print(f"error: --seed must be non-negative, got {args.seed}", file=sys.stderr)
        return 2
    try:
        rows = corpus_counts(root, args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_counts(rows))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
