"""The spikewire model file container: a JSON header plus raw numpy arrays.

No pickle anywhere: the header is JSON, the arrays are raw little-endian
bytes whose dtype comes from a short whitelist.  The byte layout is specified
in ``docs/model-format.md``; this module is its only implementation.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic  b"\\x89SPKWIRE"  (0x89 catches 7-bit / text-mode damage)
    8       4     uint32 container version (CONTAINER_VERSION = 1)
    12      4     uint32 H = length of the JSON header in bytes
    16      H     UTF-8 JSON object (the header, see below)
    16+H    ...   zero padding up to D = align(16 + H, 64)
    D       ...   data section: each array at D + offset, offset a multiple
                  of 64, zero padding between arrays
    S-32    32    SHA-256 of bytes [0, S-32)  (S = file size)

The JSON object is the caller's header dict (it must contain an integer
``schema_version``) plus one reserved key, ``"arrays"``: a list of
``{"name", "dtype", "shape", "offset", "nbytes"}`` entries in the order the
arrays were given.  :func:`load_container` returns the header without
``"arrays"``.

Every failure to load (unreadable, not a regular file, larger than ``max_bytes``, truncated, wrong magic, wrong version,
checksum mismatch, bad UTF-8 or JSON, malformed or overlapping or
out-of-bounds array table) raises :class:`ModelFileError` naming the path and
the problem.  All sizes are checked against the real file size before any
array is allocated, so a lying header cannot cause a huge allocation.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import struct
import secrets
import stat
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Mapping, Union

import numpy as np

from .safefile import open_regular

__all__ = [
    "ALIGNMENT",
    "CONTAINER_VERSION",
    "DTYPES",
    "MAGIC",
    "MAX_FILE_BYTES",
    "ModelFileError",
    "atomic_writer",
    "load_container",
    "save_container",
]

PathLike = Union[str, "os.PathLike[str]"]

MAGIC = b"\x89SPKWIRE"
CONTAINER_VERSION = 1
ALIGNMENT = 64
DTYPES = ("int8", "uint8", "int16", "int32", "int64", "float32", "float64")
_PREFIX = struct.Struct("<8sII")  # magic, version, header length
_DIGEST_SIZE = 32
_MAX_HEADER_BYTES = 64 * 1024 * 1024
#: Default bound on a model file's size for :func:`load_container` (checked with ``fstat`` before reading).
MAX_FILE_BYTES = 1 << 30
_MAX_NDIM = 32
_ENTRY_KEYS = frozenset({"name", "dtype", "shape", "offset", "nbytes"})
_RESERVED_KEY = "arrays"
_WRONG_MAGIC = f"not a spikewire model file (wrong magic number, expected {MAGIC!r})"


class ModelFileError(ValueError):
    """A model file that cannot be loaded; ``.path`` and ``.problem`` say why."""

    def __init__(self, path: PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@contextlib.contextmanager
def atomic_writer(path: PathLike) -> Iterator[BinaryIO]:
    """Open ``path`` for binary writing so that it appears complete or not at all.

    Writes go to ``.{name}.{pid}.{random}.tmp`` in the same folder (created
    with mode 0o666 minus the umask, like a plain ``open``), which is flushed,
    fsync'ed and ``os.replace``'d onto ``path`` when the block exits normally.
    On any exception the temporary file is removed and ``path`` is untouched.
    Shared by every spikewire file writer (model files, WAV, spike cache).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _align(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


# ---------------------------------------------------------------------------
# save


def save_container(path: PathLike, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> None:
    """Write a model container atomically (temporary file + ``os.replace``).

    Parameters
    ----------
    path : str or os.PathLike
        Destination file.
    header : mapping
        JSON-serialisable (strict JSON: no NaN/Infinity), string keys, must
        contain an integer ``schema_version`` >= 1 and must not contain the
        reserved key ``"arrays"``.
    arrays : mapping of str to array_like
        Non-empty unique names; dtypes from :data:`DTYPES` (stored
        little-endian, C order).  Any shape, including 0-d and 0-size.

    Raises
    ------
    ValueError, TypeError
        Invalid header or arrays; nothing is written.
    """
    header = dict(header)
    _check_schema_version(header.get("schema_version"), ValueError)
    if _RESERVED_KEY in header:
        raise ValueError(f"header key {_RESERVED_KEY!r} is reserved for the array table")
    table = []
    blobs = []
    offset = 0
    for name, value in arrays.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"array names must be non-empty strings, got {name!r}")
        a = np.asarray(value)
        if a.dtype.name not in DTYPES or a.dtype.kind not in "iuf":
            raise ValueError(f"array {name!r} has dtype {a.dtype}, allowed: {', '.join(DTYPES)}")
        if a.ndim > _MAX_NDIM:
            raise ValueError(f"array {name!r} has {a.ndim} dimensions, at most {_MAX_NDIM}")
        blob = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
        table.append({"name": name, "dtype": a.dtype.name, "shape": [int(s) for s in a.shape],
                      "offset": offset, "nbytes": len(blob)})
        blobs.append((offset, blob))
        offset = _align(offset + len(blob))
    _check_keys(header)
    header[_RESERVED_KEY] = table
    try:
        text = json.dumps(header, allow_nan=False, ensure_ascii=False, sort_keys=False,
                          separators=(",", ":"))
    except (TypeError, ValueError) as e:
        raise ValueError(f"header is not strict-JSON serialisable: {e}") from e
    hbytes = text.encode("utf-8")
    if len(hbytes) > _MAX_HEADER_BYTES:
        raise ValueError(f"header is {len(hbytes)} bytes, at most {_MAX_HEADER_BYTES}")

    data_start = _align(_PREFIX.size + len(hbytes))
    data_len = blobs[-1][0] + len(blobs[-1][1]) if blobs else 0
    data_len = _align(data_len)

    with atomic_writer(path) as f:
        sha = hashlib.sha256()

        def put(b: bytes) -> None:
            sha.update(b)
            f.write(b)

        put(_PREFIX.pack(MAGIC, CONTAINER_VERSION, len(hbytes)))
        put(hbytes)
        put(b"\x00" * (data_start - _PREFIX.size - len(hbytes)))
        pos = 0
        for off, blob in blobs:
            put(b"\x00" * (off - pos))
            put(blob)
            pos = off + len(blob)
        put(b"\x00" * (data_len - pos))
        f.write(sha.digest())


# ---------------------------------------------------------------------------
# load


def load_container(path: PathLike, *, max_bytes: int = MAX_FILE_BYTES) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and fully validate a model container.

    The 16-byte prefix is checked first (a regular file of at most ``max_bytes``, the magic, the
    container version, a header length that fits the file size); only then is the rest read.
    A file that is not a spikewire model is refused without any of its bytes in the message.

    Returns
    -------
    header : dict
        The header as saved (without the array table).
    arrays : dict of str to np.ndarray
        Native-endian, C-contiguous, writable copies, in saved order.

    Raises
    ------
    ModelFileError
        For any problem, including an unreadable file (the ``OSError`` is
        chained as ``__cause__``).
    """
    try:
        with open_regular(path) as f:  # a FIFO or a device is refused without blocking
            raw = _read_checked(f, path, max_bytes)
    except OSError as e:
        raise ModelFileError(path, f"cannot read file: {e.strerror or e}") from e

    size = len(raw)
    hlen = _PREFIX.unpack_from(raw)[2]  # checked against the size by _read_checked
    body_end = size - _DIGEST_SIZE
    stored = raw[body_end:]
    computed = hashlib.sha256(memoryview(raw)[:body_end]).digest()
    if stored != computed:
        # no digest bytes in the message: they are the file's last 32 bytes (replies must not carry file contents)
        raise ModelFileError(path, "checksum mismatch (the stored SHA-256 differs from the file's): "
                                   "file is corrupt or truncated")
    # From here on the bytes are what the writer wrote, or a crafted file: still check everything.
    data_start = _align(_PREFIX.size + hlen)
    if data_start > body_end:
        raise ModelFileError(path, f"data section start {data_start} is beyond the end of the data ({body_end})")
    header = _parse_header(raw[_PREFIX.size:_PREFIX.size + hlen], path)
    table = _check_table(header.pop(_RESERVED_KEY, None), body_end - data_start, path)
    arrays = {}
    for name, dtype, shape, offset, nbytes in table:
        start = data_start + offset
        a = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"), count=nbytes // np.dtype(dtype).itemsize,
                          offset=start)
        arrays[name] = a.astype(np.dtype(dtype), copy=True).reshape(shape)
    return header, arrays


def _read_checked(f: BinaryIO, path: PathLike, max_bytes: int) -> bytes:
    """The whole file, after the checks that need only ``fstat`` and the 16-byte prefix."""
    st = os.fstat(f.fileno())
    if not stat.S_ISREG(st.st_mode):  # a FIFO or a device (/dev/zero) would never end or block
        raise ModelFileError(path, "not a regular file")
    size = st.st_size
    if size > max_bytes:
        raise ModelFileError(path, f"file is {size} bytes, more than the {max_bytes}-byte limit for a model file")
    min_size = _PREFIX.size + _DIGEST_SIZE
    prefix = f.read(_PREFIX.size)
    if len(prefix) < _PREFIX.size:
        if not MAGIC.startswith(prefix[: len(MAGIC)]):
            raise ModelFileError(path, _WRONG_MAGIC)
        raise ModelFileError(path, f"truncated: file is {len(prefix)} bytes, a container is at least {min_size}")
    magic, version, hlen = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ModelFileError(path, _WRONG_MAGIC)
    if version != CONTAINER_VERSION:
        raise ModelFileError(path, f"unsupported container version {version} (this reader: {CONTAINER_VERSION})")
    if size < min_size:
        raise ModelFileError(path, f"truncated: file is {size} bytes, a container is at least {min_size}")
    available = size - min_size
    if hlen > available:
        raise ModelFileError(path, f"header length {hlen} exceeds the {available} bytes available")
    raw = prefix + f.read(size - _PREFIX.size)
    if len(raw) != size or f.read(1):
        raise ModelFileError(path, "file changed size while it was read")
    return raw


def _check_keys(obj: Any, where: str = "header") -> None:
    """JSON would silently turn non-string keys into strings; refuse instead."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"{where} has a non-string key {k!r}; JSON keys must be strings")
            _check_keys(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_keys(v, f"{where}[{i}]")


def _check_schema_version(value: Any, exc: type, path: PathLike | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        problem = f"header 'schema_version' must be an integer >= 1, got {value!r}"
        raise exc(path, problem) if path is not None else exc(problem)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate JSON key {k!r}")
        d[k] = v
    return d


def _parse_header(hbytes: bytes, path: PathLike) -> dict[str, Any]:
    try:
        text = hbytes.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ModelFileError(path, f"header is not valid UTF-8 ({e.reason} at byte {e.start})") from e
    try:
        header = json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except RecursionError as e:
        raise ModelFileError(path, "header JSON is nested too deeply") from e
    except ValueError as e:  # includes json.JSONDecodeError
        raise ModelFileError(path, f"header is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise ModelFileError(path, f"header must be a JSON object, got {type(header).__name__}")
    _check_schema_version(header.get("schema_version"), ModelFileError, path)
    return header


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_table(table: Any, data_len: int, path: PathLike) -> list[tuple[str, str, tuple, int, int]]:
    """Validate the array table against the data section length; no allocation."""
    if not isinstance(table, list):
        raise ModelFileError(path, f"header has no array table ('{_RESERVED_KEY}' is {table!r:.60})")
    out = []
    seen = set()
    for i, e in enumerate(table):
        if not isinstance(e, dict) or set(e) != _ENTRY_KEYS:
            raise ModelFileError(path, f"array table entry {i} must be an object with keys "
                                       f"{sorted(_ENTRY_KEYS)}, got {e!r:.120}")
        name, dtype, shape, offset, nbytes = (e[k] for k in ("name", "dtype", "shape", "offset", "nbytes"))
        if not isinstance(name, str) or not name:
            raise ModelFileError(path, f"array table entry {i}: bad name {name!r:.60}")
        if name in seen:
            raise ModelFileError(path, f"array {name!r} appears twice in the array table")
        seen.add(name)
        if dtype not in DTYPES:
            raise ModelFileError(path, f"array {name!r}: dtype {dtype!r:.40} is not one of {', '.join(DTYPES)}")
        if (not isinstance(shape, list) or len(shape) > _MAX_NDIM
                or not all(_is_int(s) and s >= 0 for s in shape)):
            raise ModelFileError(path, f"array {name!r}: bad shape {shape!r:.80}")
        if not _is_int(offset) or offset < 0 or offset % ALIGNMENT:
            raise ModelFileError(path, f"array {name!r}: bad offset {offset!r:.40} "
                                       f"(must be a non-negative multiple of {ALIGNMENT})")
        if not _is_int(nbytes) or nbytes < 0:
            raise ModelFileError(path, f"array {name!r}: bad nbytes {nbytes!r:.40}")
        expected = math.prod(shape) * np.dtype(dtype).itemsize  # exact Python int, no overflow
        if nbytes != expected:
            raise ModelFileError(path, f"array {name!r}: nbytes {nbytes} does not match shape {shape} "
                                       f"x {dtype} ({expected} bytes)")
        if offset + nbytes > data_len:
            raise ModelFileError(path, f"array {name!r}: bytes [{offset}, {offset + nbytes}) are out of bounds "
                                       f"of the {data_len}-byte data section")
        out.append((name, dtype, tuple(shape), offset, nbytes))
    spans = sorted((off, off + nb, name) for name, _, _, off, nb in out if nb > 0)
    for (s0, e0, n0), (s1, e1, n1) in zip(spans, spans[1:]):
        if s1 < e0:
            raise ModelFileError(path, f"arrays {n0!r} [{s0}, {e0}) and {n1!r} [{s1}, {e1}) overlap")
    return out
