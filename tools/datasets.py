"""Datasets for offline training and evaluation, and the encoded-spike cache.

Everything here is numpy + stdlib; ``h5py`` is imported only when an HDF5
file is read, and torch never.

Utterance lists
---------------
:func:`fsdd` and :func:`wav_folder` return lists of :class:`Utterance`
records, sorted deterministically; :func:`select` filters them by split and
speaker (both dataset functions use it, so leave-one-speaker-out is
``select(u, exclude_speakers=[s])`` for training and ``select(u, speakers=[s])``
for testing).

Split convention (Free Spoken Digit Dataset README): recording index 0-4 is
the test set, index 5 and above the training set.  It is applied to every
file named ``{label}_{speaker}_{index}.wav``.

Spike data
----------
:func:`read_shd` reads the Spiking Heidelberg Digits / Spiking Speech
Commands HDF5 files (Cramer et al. 2020) into the same CSR event format the
front end produces: ``indptr`` int64 of length ``n_steps + 1`` and
``channels`` int32, the events of step ``t`` being
``channels[indptr[t]:indptr[t+1]]`` (sorted ascending).

:class:`SpikeCache` stores front-end output per (front-end config, audio
content) so that training epochs do not re-encode audio.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np

from spikewire.modelfile import atomic_writer

__all__ = [
    "CORPORA",
    "Corpus",
    "DIGIT_WORDS",
    "DatasetError",
    "SHD_CHANNELS",
    "SpikeCache",
    "Utterance",
    "corpus",
    "default_cache_root",
    "digit_folder",
    "fsdd",
    "load_corpus",
    "fsdd_split",
    "hash_config",
    "read_shd",
    "read_shd_speakers",
    "select",
    "validate_events",
    "wav_folder",
    "word_folder",
]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FSDD_TEST_INDICES = range(0, 5)  # index 0..4 -> "test", everything else -> "train"
SPLITS = ("train", "test", "all")
SHD_CHANNELS = 700

_FSDD_NAME = re.compile(r"^(?P<digit>[0-9])_(?P<speaker>.+)_(?P<index>[0-9]+)$")
_LABELLED_NAME = re.compile(r"^(?P<label>[^_]+)_(?P<speaker>.+)_(?P<index>[0-9]+)$")


class DatasetError(ValueError):
    """A dataset folder or file that does not have the expected layout or content."""


@dataclass(frozen=True)
class Utterance:
    """One labelled recording.

    Attributes
    ----------
    path : Path
        The WAV file.
    label : str
        The word (digits are spelled out: ``"7"`` becomes ``"seven"``).
    speaker : str or None
        Speaker id when the file name carries one.
    index : int or None
        Recording index of that speaker and word, when known.
    split : {"train", "test"} or None
        From the index convention, see :func:`fsdd_split`; None if unknown.
    known : bool
        False if a vocabulary was given and ``label`` is not in it: the model
        should reject this utterance (the "unknown word" class).
    rate : int or None
        Sample rate in Hz from the WAV header (filled in by
        :func:`digit_folder` and :func:`word_folder`).
    corpus : str or None
        The :data:`CORPORA` name the utterance was loaded as, if any.
    """

    path: Path
    label: str
    speaker: Optional[str] = None
    index: Optional[int] = None
    split: Optional[str] = None
    known: bool = True
    rate: Optional[int] = None
    corpus: Optional[str] = None


def fsdd_split(index: int) -> str:
    """The FSDD split of a recording index: 0-4 -> ``"test"``, otherwise ``"train"``."""
    return "test" if index in FSDD_TEST_INDICES else "train"


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def select(
    utterances: Iterable[Utterance],
    split: str = "all",
    speakers: Optional[Iterable[str]] = None,
    exclude_speakers: Optional[Iterable[str]] = None,
) -> list[Utterance]:
    """Filter utterances by split and speaker.

    ``split="train"``/``"test"`` keeps only utterances with that split (those
    with ``split=None`` are dropped); ``"all"`` keeps everything.  Speaker
    names that match no utterance are an error (a typo would otherwise give
    an empty or unfiltered set silently).
    """
    _check_split(split)
    utterances = list(utterances)
    available = {u.speaker for u in utterances if u.speaker is not None}
    keep = None if speakers is None else _speaker_set(speakers, available, "speakers")
    drop = set() if exclude_speakers is None else _speaker_set(exclude_speakers, available, "exclude_speakers")
    return [
        u for u in utterances
        if (split == "all" or u.split == split)
        and (keep is None or u.speaker in keep)
        and u.speaker not in drop
    ]


def _speaker_set(names: Iterable[str], available: set, what: str) -> set:
    if isinstance(names, str):
        names = [names]
    names = set(names)
    unknown = names - available
    if unknown:
        raise ValueError(f"{what}: unknown speaker(s) {sorted(unknown)}; available: {sorted(available)}")
    return names


def fsdd(
    root: PathLike,
    split: str = "train",
    speakers: Optional[Iterable[str]] = None,
    exclude_speakers: Optional[Iterable[str]] = None,
) -> list[Utterance]:
    """The Free Spoken Digit Dataset.

    Parameters
    ----------
    root : path
        The dataset folder (containing ``recordings/``) or ``recordings/`` itself.
    split : {"train", "test", "all"}
        Index 0-4 is test, 5 and above train (the dataset's own convention).
    speakers, exclude_speakers : iterable of str, optional
        Keep only / drop these speakers (e.g. ``"george"``); unknown names raise.

    Returns
    -------
    list of Utterance
        Sorted by (label digit, speaker, index); labels are ``DIGIT_WORDS``.

    Raises
    ------
    DatasetError
        No recordings found, or a ``.wav`` whose name is not
        ``{digit}_{speaker}_{index}.wav``.
    """
    _check_split(split)
    root = Path(root)
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    if not folder.is_dir():
        raise DatasetError(f"FSDD folder {str(folder)!r} does not exist")
    found = []
    for p in folder.iterdir():
        if p.suffix.lower() != ".wav" or not p.is_file():
            continue
        m = _FSDD_NAME.match(p.stem)
        if m is None:
            raise DatasetError(f"{p}: not an FSDD file name (expected {{digit}}_{{speaker}}_{{index}}.wav)")
        digit, index = int(m["digit"]), int(m["index"])
        found.append((digit, m["speaker"], index,
                      Utterance(p, DIGIT_WORDS[digit], m["speaker"], index, fsdd_split(index))))
    if not found:
        raise DatasetError(f"no FSDD recordings (*.wav) in {str(folder)!r}")
    found.sort(key=lambda t: t[:3])
    return select([t[3] for t in found], split, speakers, exclude_speakers)


def _word(label: str) -> str:
    label = label.lower()
    return DIGIT_WORDS[int(label)] if len(label) == 1 and label.isdigit() else label


def wav_folder(root: PathLike, vocabulary: Optional[Sequence[str]] = None) -> list[Utterance]:
    """Any folder of labelled WAV files.

    Two layouts, mixed freely:

    * ``root/LABEL_anything.wav``: the label is the file name up to the first
      ``_`` (the whole stem if there is none).  If the stem has the FSDD form
      ``{label}_{speaker}_{index}`` the speaker, index and split are filled in
      (split by :func:`fsdd_split`).
    * ``root/LABEL/.../anything.wav``: the label is the first folder below
      ``root``; speaker, index and split stay None.

    Labels are lower-cased and a single digit becomes its word (``"3"`` ->
    ``"three"``).  With a ``vocabulary``, utterances whose label is not in it
    keep their label but get ``known=False``.  Files whose suffix is not
    ``.wav`` (any case) are ignored; hidden files and folders (leading ``.``)
    too.

    Returns
    -------
    list of Utterance
        Sorted by path.

    Raises
    ------
    DatasetError
        ``root`` is not a folder or holds no WAV files.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"WAV folder {str(root)!r} does not exist")
    vocab = None if vocabulary is None else {_word(w) for w in vocabulary}
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(root)
        for fn in filenames:
            if fn.startswith(".") or not fn.lower().endswith(".wav"):
                continue
            p = Path(dirpath) / fn
            speaker = index = split = None
            if rel.parts:
                label = _word(rel.parts[0])
            else:
                stem = p.stem
                m = _LABELLED_NAME.match(stem)
                if m is not None:
                    label, speaker, index = _word(m["label"]), m["speaker"], int(m["index"])
                    split = fsdd_split(index)
                else:
                    label = _word(stem.split("_", 1)[0])
            if not label:
                raise DatasetError(f"{p}: empty label")
            out.append(Utterance(p, label, speaker, index, split, vocab is None or label in vocab))
    if not out:
        raise DatasetError(f"no .wav files in {str(root)!r}")
    out.sort(key=lambda u: u.path)
    return out


# ---------------------------------------------------------------------------
# corpora: digit folders, word folders, the registry

# "{speaker}_nohash_{n}" (Speech Commands) or "{speaker}_{n}" inside a word folder.
_SPEAKER_NAME = re.compile(r"^(?P<speaker>.+?)(?:_nohash)?_(?P<index>[0-9]+)$")


def _header_rate(p: Path) -> int:
    from spikewire.audio import read_wav_info  # raises AudioFileError (a ValueError) naming the file

    return read_wav_info(p).rate


def _wav_files(root: Path, what: str) -> list[Path]:
    if not root.is_dir():
        raise DatasetError(f"{what} {str(root)!r} does not exist")
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [Path(dirpath) / fn for fn in filenames if not fn.startswith(".") and fn.lower().endswith(".wav")]
    if not files:
        raise DatasetError(f"no .wav files in {what} {str(root)!r}")
    return sorted(files)


def _in_word_folder(p: Path, root: Path) -> tuple[str, str, int]:
    """(label, speaker, index) of ``root/WORD/{speaker}[_nohash]_{n}.wav``."""
    rel = p.relative_to(root)
    if len(rel.parts) != 2:
        raise DatasetError(f"{p}: expected ROOT/WORD/{{speaker}}_{{n}}.wav (one folder level), got {rel}")
    m = _SPEAKER_NAME.match(p.stem)
    if m is None:
        raise DatasetError(f"{p}: not a {{speaker}}_{{n}}.wav or {{speaker}}_nohash_{{n}}.wav file name")
    return _word(rel.parts[0]), m["speaker"], int(m["index"])


def digit_folder(
    root: PathLike,
    speaker_prefix: str = "",
    corpus: Optional[str] = None,
    index_split: bool = False,
) -> list[Utterance]:
    """Spoken digits from any folder, at any sample rate.

    Two layouts, mixed freely:

    * ``root/{digit}_{speaker}_{index}.wav`` (FSDD style, digit 0-9);
    * ``root/{word}/{speaker}_nohash_{n}.wav`` or ``root/{word}/{speaker}_{n}.wav``
      (Speech Commands style), ``word`` one of ``zero`` .. ``nine`` or a digit.

    Every file's WAV header is read (its rate goes to ``Utterance.rate``); an
    unreadable file raises :class:`spikewire.audio.AudioFileError`.  The
    speaker is kept, with ``speaker_prefix`` in front (so that the same person
    gets one id across folders, e.g. ``"gsc"``).  ``split`` is the FSDD index
    convention (:func:`fsdd_split`) if ``index_split``, else None.

    Returns
    -------
    list of Utterance
        Sorted by (digit, speaker, index, path); all ``known``.

    Raises
    ------
    DatasetError
        Not a folder, no WAV files, a file name of neither layout, or a word
        folder that is not a digit (use :func:`word_folder` for those).
    """
    root = Path(root)
    found = []
    for p in _wav_files(root, "digit folder"):
        if p.parent == root:
            m = _FSDD_NAME.match(p.stem)
            if m is None:
                raise DatasetError(f"{p}: not a digit file name (expected {{digit}}_{{speaker}}_{{index}}.wav)")
            label, speaker, index = DIGIT_WORDS[int(m["digit"])], m["speaker"], int(m["index"])
        else:
            label, speaker, index = _in_word_folder(p, root)
            if label not in DIGIT_WORDS:
                raise DatasetError(f"{p}: folder {p.parent.name!r} of a digit folder is not a digit "
                                   f"({', '.join(DIGIT_WORDS)}); non-digit words belong in word_folder()")
        split = fsdd_split(index) if index_split else None
        found.append(((DIGIT_WORDS.index(label), speaker_prefix + speaker, index, p),
                      Utterance(p, label, speaker_prefix + speaker, index, split, True, _header_rate(p), corpus)))
    found.sort(key=lambda t: t[0])
    return [t[1] for t in found]


def word_folder(root: PathLike, speaker_prefix: str = "", corpus: Optional[str] = None) -> list[Utterance]:
    """Non-digit words as the "no keyword" class: ``root/{word}/{speaker}[_nohash]_{n}.wav``.

    Every utterance has ``known=False``, its word as label, the speaker (with
    ``speaker_prefix``) and index from the file name, and the header's rate.
    A digit word folder (``zero`` .. ``nine``) is an error: it would teach the
    model to reject digits.

    Returns
    -------
    list of Utterance
        Sorted by (label, speaker, index, path).

    Raises
    ------
    DatasetError
        Not a folder, no WAV files, a file directly in ``root`` or deeper than
        one folder, a file name that is not ``{speaker}_{n}.wav`` /
        ``{speaker}_nohash_{n}.wav``, or a digit word.
    """
    root = Path(root)
    found = []
    for p in _wav_files(root, "word folder"):
        label, speaker, index = _in_word_folder(p, root)
        if label in DIGIT_WORDS:
            raise DatasetError(f"{p}: {label!r} is a digit; a word folder is the 'no keyword' class")
        found.append(((label, speaker_prefix + speaker, index, p),
                      Utterance(p, label, speaker_prefix + speaker, index, None, False, _header_rate(p), corpus)))
    found.sort(key=lambda t: t[0])
    return [t[1] for t in found]


@dataclass(frozen=True)
class Corpus:
    """One audio corpus of ``../shared/data`` (our machines only; never needed at run time).

    ``folder`` is relative to the data root; ``kind`` is ``"digits"`` (read by
    :func:`digit_folder`) or ``"words"`` (:func:`word_folder`, the "no
    keyword" class).  ``pool`` names the set of people the speaker ids belong
    to: corpora with one pool share speakers (Speech Commands digits and
    words), so a speaker's validation/training side is decided once per pool.
    """

    name: str
    folder: str
    licence: str
    kind: str
    pool: str
    speaker_prefix: str = ""
    source: str = ""


CORPORA: tuple[Corpus, ...] = (
    Corpus("fsdd", "fsdd/recordings", "CC BY-SA 4.0", "digits", "fsdd",
           source="Free Spoken Digit Dataset (Jakobovski), commit 26eb9aa; 5 of its 6 speakers"),
    Corpus("gsc-digits", "gsc-v2/digits", "CC BY 4.0", "digits", "gsc",
           source="Speech Commands v0.02 test set (Warden 2018, Google LLC), digits"),
    Corpus("gsc-words", "gsc-v2/words", "CC BY 4.0", "words", "gsc", speaker_prefix="gsc",
           source="Speech Commands v0.02 test set (Warden 2018, Google LLC), 15 non-digit words"),
    Corpus("more-voices-digits", "more-voices/digits", "MIT (insp*: inspektral/audioMNIST-classifier); "
           "CC BY-SA 3.0 (astallison: Asterisk / Allison Smith)", "digits", "more-voices",
           source="inspektral/audioMNIST-classifier f182d80 predict_data; asterisk-core-sounds-en-wav 1.6.1 Allison"),
    Corpus("more-voices-words", "more-voices/words", "CC BY-SA 3.0 (Asterisk / Allison Smith)", "words",
           "more-voices", source="asterisk-core-sounds-en-wav 1.6.1-1, en_US_f_Allison"),
    Corpus("dspspeech20", "dspspeech20", "MIT", "words", "dspspeech20",
           source="zhongyuchen/DSPSpeech-20 commit 8165959, 8 English words, Mandarin-accented"),
)
"""Every corpus with its licence (from the corpus READMEs); model cards must name the ones used."""

_CORPUS_KINDS = ("digits", "words")


def corpus(name: str) -> Corpus:
    """The :data:`CORPORA` entry called ``name`` (ValueError listing the names otherwise)."""
    for c in CORPORA:
        if c.name == name:
            return c
    raise ValueError(f"unknown corpus {name!r}; known: {', '.join(c.name for c in CORPORA)}")


def load_corpus(c: Union[str, Corpus], data_root: PathLike) -> list[Utterance]:
    """Load one corpus from ``data_root / c.folder`` (utterances carry ``corpus=c.name``).

    FSDD gets its index split (:func:`fsdd_split`); the others ``split=None``.
    """
    c = corpus(c) if isinstance(c, str) else c
    if c.kind not in _CORPUS_KINDS:
        raise ValueError(f"corpus {c.name!r}: kind must be one of {_CORPUS_KINDS}, got {c.kind!r}")
    folder = Path(data_root) / c.folder
    if c.kind == "digits":
        return digit_folder(folder, c.speaker_prefix, c.name, index_split=c.name == "fsdd")
    return word_folder(folder, c.speaker_prefix, c.name)


# ---------------------------------------------------------------------------
# SHD / SSC


def _import_h5py():
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("reading SHD/SSC files needs h5py: pip install h5py") from e
    return h5py


def _open_h5(path: PathLike):
    h5py = _import_h5py()
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise
    except OSError as e:
        raise DatasetError(f"{path}: not a readable HDF5 file ({e})") from e


def _dataset(f, name: str, path: PathLike):
    obj = f.get(name)
    h5py = _import_h5py()
    if not isinstance(obj, h5py.Dataset):
        raise DatasetError(f"{path}: missing dataset {name!r} (SHD layout: spikes/times, spikes/units, labels, "
                           f"extra/keys)")
    return obj


def read_shd(
    path: PathLike,
    dt: float = 1e-3,
    max_samples: Optional[int] = None,
    n_steps: Optional[int] = None,
    unique: bool = True,
) -> tuple[list[tuple[tuple[np.ndarray, np.ndarray], int]], list[str]]:
    """Read an SHD/SSC HDF5 file into binned CSR events.

    Parameters
    ----------
    path : path
        HDF5 file with ``spikes/times`` (vlen float16 seconds),
        ``spikes/units`` (vlen uint16 channel ids 0..699), ``labels`` (uint16)
        and ``extra/keys`` (bytes words).
    dt : float
        Bin width in seconds; a spike at time ``t`` goes to step
        ``floor(t / dt)`` (computed in float64 from the stored float16 value).
    max_samples : int, optional
        Read only the first ``max_samples`` samples.
    n_steps : int, optional
        If given, every sample gets exactly ``n_steps`` steps and spikes at
        later steps are dropped.  If None, a sample has ``last_step + 1``
        steps (0 for a sample without spikes).
    unique : bool
        If True (default), several spikes of one channel in one step become
        one event (a binary raster, as the front end produces); if False they
        are kept as repeated channel ids.

    Returns
    -------
    samples : list of ((indptr, channels), label)
        ``indptr`` int64 ``[n_steps + 1]``, ``channels`` int32 sorted within
        each step, ``label`` an int index into ``keys``.
    keys : list of str
        The words, decoded from ``extra/keys``.

    Raises
    ------
    DatasetError
        Not HDF5, missing datasets, inconsistent lengths, out-of-range units,
        negative or non-finite times, labels outside the key list.
    ImportError
        h5py is not installed.
    """
    if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive finite number of seconds, got {dt!r}")
    if max_samples is not None and (not isinstance(max_samples, int) or max_samples < 0):
        raise ValueError(f"max_samples must be a non-negative int or None, got {max_samples!r}")
    if n_steps is not None and (not isinstance(n_steps, int) or n_steps < 0):
        raise ValueError(f"n_steps must be a non-negative int or None, got {n_steps!r}")
    with _open_h5(path) as f:
        times_ds = _dataset(f, "spikes/times", path)
        units_ds = _dataset(f, "spikes/units", path)
        labels_ds = _dataset(f, "labels", path)
        keys = _read_keys(_dataset(f, "extra/keys", path), path)
        n = len(labels_ds)
        if len(times_ds) != n or len(units_ds) != n:
            raise DatasetError(f"{path}: {len(times_ds)} spike-time arrays, {len(units_ds)} unit arrays and "
                               f"{n} labels; they must be equal")
        if max_samples is not None:
            n = min(n, max_samples)
        try:
            labels = np.asarray(labels_ds[:n])
        except (TypeError, ValueError, OSError) as e:
            raise DatasetError(f"{path}: cannot read labels: {e}") from e
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DatasetError(f"{path}: labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
        bad = np.flatnonzero((labels < 0) | (labels >= len(keys)))
        if bad.size:
            i = int(bad[0])
            raise DatasetError(f"{path}: label {int(labels[i])} of sample {i} is outside the {len(keys)} keys")
        samples = []
        for i in range(n):
            try:
                t = np.asarray(times_ds[i], dtype=np.float64)
                u = np.asarray(units_ds[i])
            except (TypeError, ValueError, OSError) as e:
                raise DatasetError(f"{path}: cannot read spikes of sample {i}: {e}") from e
            events = _bin_spikes(t, u, dt, n_steps, unique, f"{path}: sample {i}")
            samples.append((events, int(labels[i])))
    return samples, keys


def read_shd_speakers(path: PathLike, max_samples: Optional[int] = None) -> Optional[np.ndarray]:
    """The ``extra/speaker`` ids (int64) of an SHD/SSC file, or None if absent."""
    with _open_h5(path) as f:
        if "extra/speaker" not in f:
            return None
        sp = np.asarray(f["extra/speaker"][: max_samples if max_samples is not None else None])
        if sp.ndim != 1 or sp.dtype.kind not in "iu":
            raise DatasetError(f"{path}: extra/speaker must be a 1-D integer array, got {sp.dtype} {sp.shape}")
        return sp.astype(np.int64)


def _read_keys(ds, path: PathLike) -> list[str]:
    try:
        raw = ds[()]
    except (TypeError, ValueError, OSError) as e:
        raise DatasetError(f"{path}: cannot read extra/keys: {e}") from e
    raw = np.atleast_1d(np.asarray(raw, dtype=object)) if np.ndim(raw) <= 1 else None
    if raw is None:
        raise DatasetError(f"{path}: extra/keys must be 1-D")
    keys = []
    for k in raw:
        if isinstance(k, np.bytes_):
            k = bytes(k)
        if isinstance(k, bytes):
            try:
                k = k.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetError(f"{path}: key {k!r} in extra/keys is not UTF-8") from e
        if not isinstance(k, str):
            raise DatasetError(f"{path}: extra/keys holds {type(k).__name__} {k!r}, expected strings/bytes")
        keys.append(k)
    return keys


def _bin_spikes(t: np.ndarray, u: np.ndarray, dt: float, n_steps: Optional[int], unique: bool,
                where: str) -> tuple[np.ndarray, np.ndarray]:
    if t.ndim != 1 or u.ndim != 1 or t.shape != u.shape:
        raise DatasetError(f"{where}: {t.size} spike times but {u.size} units")
    if u.size and u.dtype.kind not in "iu":
        raise DatasetError(f"{where}: units have dtype {u.dtype}, expected integers")
    if t.size:
        if not np.all(np.isfinite(t)) or t.min() < 0:
            bad = int(np.flatnonzero(~np.isfinite(t) | (t < 0))[0])
            raise DatasetError(f"{where}: spike time {t[bad]} (spike {bad}) is negative or not finite")
        if u.min() < 0 or u.max() >= SHD_CHANNELS:
            bad = int(np.flatnonzero((u < 0) | (u >= SHD_CHANNELS))[0])
            raise DatasetError(f"{where}: unit {int(u[bad])} (spike {bad}) is outside 0..{SHD_CHANNELS - 1}")
    steps = np.floor(t / dt).astype(np.int64)
    ch = u.astype(np.int64)
    if n_steps is None:
        T = int(steps.max()) + 1 if steps.size else 0
    else:
        T = n_steps
        keep = steps < T
        steps, ch = steps[keep], ch[keep]
    key = steps * SHD_CHANNELS + ch
    key = np.unique(key) if unique else np.sort(key, kind="stable")
    steps, ch = np.divmod(key, SHD_CHANNELS)
    indptr = np.zeros(T + 1, dtype=np.int64)
    np.cumsum(np.bincount(steps, minlength=T), out=indptr[1:])
    return indptr, ch.astype(np.int32)


# ---------------------------------------------------------------------------
# encoded-spike cache


CACHE_FORMAT = "v1"
_SAFE_HASH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def default_cache_root() -> Path:
    """``$SPIKEWIRE_CACHE`` if set and non-empty, else ``~/.cache/spikewire``."""
    env = os.environ.get("SPIKEWIRE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "spikewire"


def hash_config(config: Any) -> str:
    """A stable 16-hex-digit hash of a JSON-serialisable front-end config.

    Canonical JSON (sorted keys, no whitespace, strict: no NaN) then SHA-256.
    Dataclasses should be passed through ``dataclasses.asdict`` first.
    """
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def validate_events(indptr: Any, channels: Any, what: str = "events") -> tuple[np.ndarray, np.ndarray]:
    """Check a CSR event list and return it as (int64 indptr, int32 channels).

    Rules: both 1-D integer arrays, ``len(indptr) >= 1``, ``indptr[0] == 0``,
    non-decreasing, ``indptr[-1] == len(channels)``, channels in 0..2**31-1.
    Raises ``ValueError`` naming ``what`` and the offending value.
    """
    ip = np.asarray(indptr)
    ch = np.asarray(channels)
    if ip.ndim != 1 or ip.size < 1 or (ip.dtype.kind not in "iu"):
        raise ValueError(f"{what}: indptr must be a non-empty 1-D integer array, got {ip.dtype} {ip.shape}")
    if ch.ndim != 1 or (ch.size and ch.dtype.kind not in "iu"):
        raise ValueError(f"{what}: channels must be a 1-D integer array, got {ch.dtype} {ch.shape}")
    if ip[0] != 0:
        raise ValueError(f"{what}: indptr[0] is {int(ip[0])}, must be 0")
    if ip.size > 1 and np.any(np.diff(ip) < 0):
        i = int(np.flatnonzero(np.diff(ip) < 0)[0])
        raise ValueError(f"{what}: indptr decreases at step {i} ({int(ip[i])} -> {int(ip[i + 1])})")
    if int(ip[-1]) != ch.size:
        raise ValueError(f"{what}: indptr[-1] is {int(ip[-1])} but there are {ch.size} channels")
    if ch.size and (int(ch.min()) < 0 or int(ch.max()) > np.iinfo(np.int32).max):
        raise ValueError(f"{what}: channel ids must be in 0..2**31-1, got range {int(ch.min())}..{int(ch.max())}")
    return ip.astype(np.int64), ch.astype(np.int32)


class SpikeCache:
    """Per-utterance cache of encoded spike events on disk.

    Key: (front-end config hash, SHA-256 of the audio file's bytes).  The
    content digest (rather than path + mtime) means a re-recorded file with
    the same name is never served stale events, and copies of a file share
    one entry.  Within one ``SpikeCache`` object the digest of a path is
    memoised by ``(size, mtime_ns, inode)``, so each file is hashed once per
    process unless it changes.

    Layout: ``root/v1/{config_hash}/{digest[:2]}/{digest}.npz`` with arrays
    ``indptr`` (int64), ``channels`` (int32) and ``key`` (the string
    ``"{config_hash}/{digest}"``, checked on load).  Entries are written to a
    temporary file in the same folder and renamed into place, so readers
    never see half-written entries and concurrent writers are harmless.
    Entries are loaded with ``allow_pickle=False``.  An entry that cannot be
    read or fails validation is logged as a warning, re-encoded and
    overwritten.

    Attributes
    ----------
    hits, misses, repaired : int
        Counters: served from cache, encoded because absent, encoded because
        the entry was corrupt.
    """

    def __init__(self, root: Optional[PathLike] = None):
        self.root = Path(root) if root is not None else default_cache_root()
        self.hits = 0
        self.misses = 0
        self.repaired = 0
        self._digests: dict[str, tuple[tuple[int, int, int], str]] = {}

    def digest(self, path: PathLike) -> str:
        """SHA-256 hex digest of the file's content (memoised by size/mtime/inode)."""
        path = Path(path)
        st = path.stat()
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
        memo = self._digests.get(str(path))
        if memo is not None and memo[0] == stamp:
            return memo[1]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        d = h.hexdigest()
        self._digests[str(path)] = (stamp, d)
        return d

    def entry_path(self, path: PathLike, config_hash: str) -> Path:
        """Where the entry for this file and config lives (it may not exist)."""
        self._check_hash(config_hash)
        d = self.digest(path)
        return self.root / CACHE_FORMAT / config_hash / d[:2] / f"{d}.npz"

    @staticmethod
    def _check_hash(config_hash: str) -> None:
        if not isinstance(config_hash, str) or not _SAFE_HASH.match(config_hash):
            raise ValueError(f"config_hash must be 1-128 characters of [A-Za-z0-9._-] not starting with "
                             f"'.' or '-', got {config_hash!r}")

    def get_or_encode(
        self,
        path: PathLike,
        encoder: Callable[[Path], tuple[np.ndarray, np.ndarray]],
        config_hash: str,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the cached events of ``path`` or encode, store and return them.

        Parameters
        ----------
        path : path
            The audio file.
        encoder : callable
            ``encoder(path) -> (indptr, channels)`` in CSR form; called only on
            a miss.  Its output is validated (see :func:`validate_events`).
        config_hash : str
            Identifies the encoder configuration, e.g. :func:`hash_config`.

        Returns
        -------
        (indptr int64, channels int32)
        """
        entry = self.entry_path(path, config_hash)
        key = f"{config_hash}/{entry.stem}"
        if entry.exists():
            try:
                events = self._load(entry, key)
            except Exception as e:  # noqa: BLE001 - any unreadable entry (zip, npy, key, validation) is re-encoded
                log.warning("spike cache entry %s for %s is corrupt (%s); re-encoding", entry, path, e)
                self.repaired += 1
            else:
                self.hits += 1
                return events
        else:
            self.misses += 1
        indptr, channels = validate_events(*encoder(Path(path)), what=f"encoder output for {path}")
        self._store(entry, key, indptr, channels)
        return indptr, channels

    @staticmethod
    def _load(entry: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
        with np.load(entry, allow_pickle=False) as z:
            stored_key = str(z["key"][()])
            if stored_key != key:
                raise ValueError(f"entry key {stored_key!r} does not match {key!r}")
            indptr, channels = z["indptr"], z["channels"]
            if indptr.dtype != np.int64 or channels.dtype != np.int32:
                raise ValueError(f"entry dtypes {indptr.dtype}/{channels.dtype}, expected int64/int32")
            return validate_events(indptr, channels, what=str(entry))

    @staticmethod
    def _store(entry: Path, key: str, indptr: np.ndarray, channels: np.ndarray) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(entry) as f:
            np.savez(f, indptr=indptr, channels=channels, key=np.array(key))
