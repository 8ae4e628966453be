"""What an evaluation runs on: the labelled WAV files (and unknown words) and the chip."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from spikewire.config import Chip

from .datasets import DatasetError, Utterance, select, wav_folder
from .errors import EvalError


PathLike = Union[str, Path]


def find_utterances(data: PathLike, vocabulary: Sequence[str], split: str = "all",
                    speakers: Optional[Iterable[str]] = None) -> list[Utterance]:
    """The labelled WAV files of ``data`` (see :func:`spikewire.tools.datasets.wav_folder`).

    ``data`` may be an FSDD checkout (its ``recordings/`` folder is used) or
    any labelled WAV folder.  ``split`` follows the FSDD index convention for
    ``{label}_{speaker}_{index}.wav`` names; words outside ``vocabulary`` are
    kept with ``known=False``.
    """
    root = Path(data)
    if not root.is_dir():
        raise EvalError(f"data folder {str(root)!r} does not exist")
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    try:
        utts = wav_folder(folder, vocabulary)
    except DatasetError as e:
        raise EvalError(str(e)) from None
    if split != "all" and not any(u.split is not None for u in utts):
        raise EvalError(f"--split {split} needs FSDD-style file names {{label}}_{{speaker}}_{{index}}.wav "
                        f"(none in {str(folder)!r}); use --split all")
    try:
        utts = select(utts, split, speakers=list(speakers) if speakers else None)
    except ValueError as e:
        raise EvalError(str(e)) from None
    if not utts:
        raise EvalError(f"no utterances in {str(folder)!r} for split={split!r}"
                        + (f", speakers={sorted(speakers)}" if speakers else ""))
    return utts


def unknown_utterances(folders: Sequence[PathLike], vocabulary: Sequence[str]) -> list[Utterance]:
    """Every WAV of ``folders`` as an *unknown word* (``known=False``), whatever
    ``--split`` or ``--speaker`` select: words the model must reject (e.g. from
    ``python -m spikewire.tools.words``).  A file whose label is in the vocabulary is an
    error: it would be scored as a false accept when the model is right."""
    out: list[Utterance] = []
    for d in folders:
        root = Path(d)
        if not root.is_dir():
            raise EvalError(f"unknown-word folder {str(root)!r} does not exist")
        try:
            utts = wav_folder(root, vocabulary)
        except DatasetError as e:
            raise EvalError(str(e)) from None
        known = sorted({u.label for u in utts if u.known})
        if known:
            raise EvalError(f"unknown-word folder {str(root)!r} holds words of the vocabulary: {known}")
        out += [dataclasses.replace(u, split=None, speaker=None, index=None) for u in utts]
    return out


def make_chip(seed: Optional[int], spread: Optional[float]) -> Optional[Chip]:
    """A chip with the same relative spread for threshold, leak, decay and gain (None: ideal)."""
    if seed is None and not spread:
        return None
    s = 0.0 if spread is None else float(spread)
    return Chip(seed=int(seed or 0), threshold=s, leak=s, decay=s, gain=s)


def _chip_dict(chip: Optional[Chip]) -> Optional[dict]:
    return None if chip is None else dataclasses.asdict(chip)
