"""WAV file input and output (numpy and the standard library only).

Reading
-------
:func:`read_wav` parses the RIFF container itself (no ``wave`` module), so the
same code path handles every supported encoding:

============================  ==========================================
format tag                    sample encodings
============================  ==========================================
``1``  WAVE_FORMAT_PCM        8-bit unsigned, 16/24/32-bit signed
``3``  WAVE_FORMAT_IEEE_FLOAT 32/64-bit float
``0xFFFE`` EXTENSIBLE         either of the above, chosen by the sub-format
                              GUID; ``wValidBitsPerSample`` may be smaller
                              than the container (samples are left-justified)
============================  ==========================================

Chunks other than ``fmt `` and ``data`` (``LIST``, ``fact``, ``cue ``, ...) are
skipped; a chunk with an odd size is followed by one pad byte, as RIFF
requires.  The RIFF size field is not trusted (streaming writers leave it 0 or
wrong); the chunk walk is bounded by the real file size and stops as soon as
both ``fmt `` and ``data`` have been seen, so trailing bytes after the data are
ignored.  The walk seeks from chunk header to chunk header: only the headers
and the ``fmt `` chunk are read, and more than 10000 chunks before ``fmt `` and
``data`` are an error.

:class:`WavReader` reads a file block by block (memory bounded by the block,
not the file; the ``wav:`` source streams files this way); :func:`read_wav`
and :func:`read_wav_int16` read the whole data chunk with the same decoder, so
both give the same samples.

Scaling to float: a ``B``-bit signed PCM value ``v`` becomes ``v / 2**(B-1)``
(so 16-bit gives ``[-1, 1 - 2**-15]``); 8-bit unsigned ``u`` becomes
``(u - 128) / 128``.  Float files are taken as stored and clipped to
``[-1, 1]``; a NaN or infinite sample is an error.

Multi-channel files are downmixed to mono by the mean over channels
(computed in float64, then rounded to float32).

Errors
------
A file that is not a WAV file, is corrupt, uses an unsupported encoding, or
is truncated raises :class:`AudioFileError` (a ``ValueError``) whose message
starts with the file name and says what is wrong.  Operating-system errors
(missing file, permission denied) propagate as ``OSError`` unchanged.

A truncated ``data`` chunk (its size field claims more bytes than the file
holds) is an error by default: silently returning a shorter signal hides a
broken download or an interrupted recording.  ``allow_truncated=True`` returns
the whole frames that are present instead.

Writing
-------
:func:`write_wav` writes 16-bit PCM only.  Float input is clipped to
``[-1, 1]`` and scaled by 32768 with round-half-to-even, then clipped to
``[-32768, 32767]``; so ``read_wav(write_wav(x))`` returns ``x`` exactly when
``x`` is a multiple of ``2**-15`` in range.  int16 input is written unchanged.
The file is written to a temporary name and renamed into place.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Union

import numpy as np

from .modelfile import atomic_writer
from .safefile import open_regular

__all__ = ["AudioFileError", "WavInfo", "WavReader", "read_wav", "read_wav_int16", "read_wav_info", "write_wav"]

PathLike = Union[str, "os.PathLike[str]"]

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_EXTENSIBLE = 0xFFFE

# The 14 bytes that follow the 2-byte format code in a KSDATAFORMAT_SUBTYPE_* GUID.
_KSDATAFORMAT_TAIL = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"

_SUPPORTED_BITS = {WAVE_FORMAT_PCM: (8, 16, 24, 32), WAVE_FORMAT_IEEE_FLOAT: (32, 64)}
_FORMAT_NAMES = {WAVE_FORMAT_PCM: "PCM", WAVE_FORMAT_IEEE_FLOAT: "IEEE float"}


class AudioFileError(ValueError):
    """A WAV file that cannot be read: not a WAV, corrupt, truncated or unsupported.

    Attributes
    ----------
    path : str
        The file that was being read.
    """

    def __init__(self, path: PathLike, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@dataclass(frozen=True)
class WavInfo:
    """What the ``fmt `` chunk says, plus the number of whole frames read.

    ``format_tag`` is the effective format (1 = PCM, 3 = float), also for
    WAVE_FORMAT_EXTENSIBLE files (then ``extensible`` is True).
    """

    format_tag: int
    channels: int
    rate: int
    bits: int
    block_align: int
    frames: int
    extensible: bool
    truncated: bool


def read_wav(path: PathLike, *, allow_truncated: bool = False) -> tuple[np.ndarray, int]:
    """Read a WAV file as mono float32 in ``[-1, 1]``.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    allow_truncated : bool
        If False (default) a data chunk shorter than its size field is an
        :class:`AudioFileError`; if True the whole frames present are returned.

    Returns
    -------
    samples : np.ndarray
        float32, shape ``(n_frames,)``; multi-channel input is averaged.
    rate : int
        Sample rate in Hz.

    Raises
    ------
    AudioFileError
        The file is not a readable WAV file (message names file and problem).
    OSError
        The file cannot be opened.
    """
    frames, info = _read_frames(path, allow_truncated)
    return _to_mono_float(frames, info, path), info.rate


def read_wav_int16(path: PathLike, *, allow_truncated: bool = False) -> tuple[np.ndarray, int]:
    """Read a WAV file as mono int16.

    16-bit mono files are returned bit-exactly.  Anything else goes through
    :func:`read_wav` and is converted with ``round(x * 32768)`` (half to even),
    clipped to ``[-32768, 32767]``.  Same errors as :func:`read_wav`.
    """
    frames, info = _read_frames(path, allow_truncated)
    if info.format_tag == WAVE_FORMAT_PCM and info.bits == 16 and info.channels == 1:
        return frames.reshape(-1).astype(np.int16, copy=True), info.rate
    mono = _to_mono_float(frames, info, path).astype(np.float64)
    return _float_to_int16(mono), info.rate


def read_wav_info(path: PathLike, *, allow_truncated: bool = False) -> WavInfo:
    """Parse and validate a WAV file's header and return its format.

    Only the chunk headers and the ``fmt `` chunk are read (sample values,
    e.g. a NaN in a float file, are not looked at)."""
    with WavReader(path, allow_truncated=allow_truncated) as r:
        return r.info


def write_wav(path: PathLike, samples: np.ndarray, rate: int) -> None:
    """Write 16-bit PCM WAV.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; written atomically (temporary file + rename).
    samples : array_like
        Shape ``(n,)`` for mono or ``(n, channels)``.  Floating point values
        are clipped to ``[-1, 1]`` and scaled by 32768 (round half to even,
        then clipped to the int16 range); int16 values are written as is.
        Other integer dtypes are rejected rather than guessed at.
    rate : int
        Sample rate in Hz, 1 .. 2**32-1.

    Raises
    ------
    ValueError
        Bad shape, dtype, non-finite samples or rate.
    """
    a = np.asarray(samples)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[1] < 1 or a.shape[1] > 0xFFFF:
        raise ValueError(f"samples must have shape (n,) or (n, channels), got shape {np.shape(samples)}")
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or not 1 <= int(rate) <= 0xFFFFFFFF:
        raise ValueError(f"rate must be an integer in 1..2**32-1, got {rate!r}")
    rate = int(rate)
    if a.dtype == np.int16:
        pcm = a
    elif a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise ValueError("samples contain NaN or infinite values")
        pcm = _float_to_int16(np.clip(a.astype(np.float64), -1.0, 1.0))
    else:
        raise ValueError(f"samples must be floating point or int16, got dtype {a.dtype}")
    channels = a.shape[1]
    data = np.ascontiguousarray(pcm, dtype="<i2").tobytes()
    if len(data) > 0xFFFFFFFF - 36:
        raise ValueError(f"too many samples for a WAV file ({a.size} samples)")
    block_align = 2 * channels
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, WAVE_FORMAT_PCM, channels, rate, rate * block_align, block_align, 16)
    header += b"data" + struct.pack("<I", len(data))
    pad = b"\x00" if len(data) % 2 else b""
    with atomic_writer(path) as f:
        f.write(header + data + pad)


# ---------------------------------------------------------------------------
# internals


def _float_to_int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)


def _parse_fmt(body: bytes, path: PathLike) -> tuple[int, int, int, int, int, bool]:
    if len(body) < 16:
        raise AudioFileError(path, f"'fmt ' chunk is {len(body)} bytes, need at least 16")
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", body)
    extensible = tag == WAVE_FORMAT_EXTENSIBLE
    if extensible:
        if len(body) < 40:
            raise AudioFileError(path, f"WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk is {len(body)} bytes, need 40")
        cb_size, valid_bits, _mask = struct.unpack_from("<HHI", body, 16)
        guid = body[24:40]
        if cb_size < 22:
            raise AudioFileError(path, f"WAVE_FORMAT_EXTENSIBLE cbSize is {cb_size}, need at least 22")
        if guid[2:] != _KSDATAFORMAT_TAIL:
            raise AudioFileError(path, f"unsupported WAVE_FORMAT_EXTENSIBLE sub-format GUID {guid.hex()}")
        tag = struct.unpack_from("<H", guid)[0]
        if valid_bits > bits:
            raise AudioFileError(path, f"wValidBitsPerSample {valid_bits} exceeds wBitsPerSample {bits}")
    if tag not in _SUPPORTED_BITS:
        raise AudioFileError(path, f"unsupported format tag 0x{tag:04x} (only PCM, IEEE float and EXTENSIBLE)")
    if bits not in _SUPPORTED_BITS[tag]:
        raise AudioFileError(path, f"unsupported {_FORMAT_NAMES[tag]} sample size {bits} bits "
                                   f"(supported: {_SUPPORTED_BITS[tag]})")
    if channels < 1:
        raise AudioFileError(path, f"channel count is {channels}")
    if rate < 1:
        raise AudioFileError(path, f"sample rate is {rate}")
    if block_align != channels * bits // 8:
        raise AudioFileError(path, f"block align {block_align} does not match {channels} channels x {bits} bits")
    return tag, channels, rate, bits, block_align, extensible


# A real WAV file has a handful of chunks before its data; a file that is
# mostly tiny chunk headers is refused instead of walked for minutes.
_MAX_CHUNKS = 10000
# Of the 'fmt ' chunk only the first 40 bytes mean anything (EXTENSIBLE).
_FMT_BYTES = 40


@dataclass(frozen=True)
class _Layout:
    tag: int
    channels: int
    rate: int
    bits: int
    block_align: int
    extensible: bool
    data_start: int
    frames: int
    truncated: bool


def _parse_header(f, path: PathLike, allow_truncated: bool) -> _Layout:
    """Walk the chunks of an open file with seeks; only headers and 'fmt ' are read."""
    n = os.fstat(f.fileno()).st_size
    head = f.read(12)
    if len(head) < 12:
        raise AudioFileError(path, f"file is {len(head)} bytes, too short to be a WAV file")
    riff, _riff_size, wave = struct.unpack_from("<4sI4s", head)
    if riff in (b"RIFX", b"RF64"):
        raise AudioFileError(path, f"unsupported RIFF variant {riff!r} (only little-endian RIFF)")
    if riff != b"RIFF" or wave != b"WAVE":
        raise AudioFileError(path, f"not a WAV file (starts with {head!r}, expected b'RIFF....WAVE')")

    fmt = None
    data_start = data_size = None
    truncated = False
    pos = 12
    chunks = 0
    while pos < n and (fmt is None or data_start is None):
        chunks += 1
        if chunks > _MAX_CHUNKS:
            raise AudioFileError(path, f"more than {_MAX_CHUNKS} chunks before 'fmt ' and 'data'")
        if pos + 8 > n:
            raise AudioFileError(path, f"truncated chunk header at offset {pos} ({n - pos} bytes left)")
        f.seek(pos)
        cid, size = struct.unpack("<4sI", f.read(8))
        body_start = pos + 8
        available = n - body_start
        if cid == b"data":
            if data_start is None:
                data_start, data_size = body_start, size
                if size > available:
                    if not allow_truncated:
                        raise AudioFileError(path, f"truncated: data chunk claims {size} bytes but only "
                                                   f"{available} remain (allow_truncated=True to read them)")
                    truncated = True
                    data_size = available
        elif size > available:
            raise AudioFileError(path, f"truncated: chunk {cid!r} at offset {pos} claims {size} bytes "
                                       f"but only {available} remain")
        elif cid == b"fmt " and fmt is None:
            fmt = _parse_fmt(f.read(min(size, _FMT_BYTES)), path)
        pos = body_start + size + (size & 1)

    if fmt is None:
        raise AudioFileError(path, "no 'fmt ' chunk")
    if data_start is None:
        raise AudioFileError(path, "no 'data' chunk")
    tag, channels, rate, bits, block_align, extensible = fmt
    frames, rest = divmod(data_size, block_align)
    if rest:
        if not (truncated or allow_truncated):
            raise AudioFileError(path, f"data chunk size {data_size} is not a multiple of the "
                                       f"frame size {block_align}")
        truncated = True
    return _Layout(tag, channels, rate, bits, block_align, extensible, data_start, frames, truncated)


def _decode(body: bytes, lay: _Layout) -> np.ndarray:
    """Raw little-endian sample bytes (whole frames) -> array (frames, channels)."""
    if lay.tag == WAVE_FORMAT_IEEE_FLOAT:
        samples = np.frombuffer(body, dtype="<f4" if lay.bits == 32 else "<f8")
    elif lay.bits == 8:
        samples = np.frombuffer(body, dtype=np.uint8)
    elif lay.bits == 16:
        samples = np.frombuffer(body, dtype="<i2")
    elif lay.bits == 24:
        b = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        samples = (v ^ 0x800000) - 0x800000  # sign-extend 24 -> 32 bits
    else:
        samples = np.frombuffer(body, dtype="<i4")
    return samples.reshape(len(body) // lay.block_align, lay.channels)


class WavReader:
    """A WAV file read in blocks: memory is bounded by the block, not the file.

    Opening parses and validates the header (same checks and messages as
    :func:`read_wav`; only chunk headers and the 'fmt ' chunk are read).
    :meth:`read_int16` / :meth:`read_float` return the next at most
    ``max_frames`` frames as mono, converted exactly as :func:`read_wav_int16` /
    :func:`read_wav` convert the whole file, so reading a file block by block
    gives the same samples.  A non-finite float sample raises
    :class:`AudioFileError` when its block is read.  Use as a context manager
    (or call :meth:`close`).
    """

    def __init__(self, path: PathLike, *, allow_truncated: bool = False):
        self.path = os.fspath(path)
        self._f = open_regular(path)  # a FIFO or a device is refused, never waited on
        try:
            self._lay = _parse_header(self._f, path, allow_truncated)
        except BaseException:
            self._f.close()
            raise
        lay = self._lay
        self.info = WavInfo(lay.tag, lay.channels, lay.rate, lay.bits, lay.block_align, lay.frames,
                            lay.extensible, lay.truncated)
        self.position = 0  # frames returned so far
        self._f.seek(lay.data_start)

    @property
    def rate(self) -> int:
        return self.info.rate

    @property
    def frames(self) -> int:
        return self.info.frames

    def __enter__(self) -> "WavReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    def read_frames(self, max_frames: int) -> np.ndarray:
        """The next at most ``max_frames`` raw frames, shape ``(n, channels)`` (empty at the end)."""
        if isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer)) or max_frames < 0:
            raise ValueError(f"max_frames must be a non-negative integer, got {max_frames!r}")
        n = min(int(max_frames), self.info.frames - self.position)
        want = n * self.info.block_align
        body = self._f.read(want) if want else b""
        if len(body) != want:
            raise AudioFileError(self.path, f"file shrank while reading: frame {self.position + len(body) // self.info.block_align} "
                                            f"of {self.info.frames} is missing")
        frames = _decode(body, self._lay)
        self.position += n
        return frames

    def read_float(self, max_frames: int) -> np.ndarray:
        """The next at most ``max_frames`` frames as mono float32 (see :func:`read_wav`)."""
        first = self.position
        return _to_mono_float(self.read_frames(max_frames), self.info, self.path, first)

    def read_int16(self, max_frames: int) -> np.ndarray:
        """The next at most ``max_frames`` frames as mono int16 (see :func:`read_wav_int16`)."""
        first = self.position
        frames = self.read_frames(max_frames)
        info = self.info
        if info.format_tag == WAVE_FORMAT_PCM and info.bits == 16 and info.channels == 1:
            return frames.reshape(-1).astype(np.int16, copy=True)
        return _float_to_int16(_to_mono_float(frames, info, self.path, first).astype(np.float64))


def _read_frames(path: PathLike, allow_truncated: bool) -> tuple[np.ndarray, WavInfo]:
    """Return the raw samples as an array of shape (frames, channels) and the format."""
    with WavReader(path, allow_truncated=allow_truncated) as r:
        return r.read_frames(r.frames), r.info


def _to_mono_float(frames: np.ndarray, info: WavInfo, path: PathLike, first_frame: int = 0) -> np.ndarray:
    if info.format_tag == WAVE_FORMAT_IEEE_FLOAT:
        x = frames.astype(np.float64)
        if not np.all(np.isfinite(x)):
            bad = int(np.argmin(np.isfinite(x).all(axis=1)))
            raise AudioFileError(path, f"non-finite float sample in frame {first_frame + bad}")
        x = np.clip(x, -1.0, 1.0)
    elif info.bits == 8:
        x = (frames.astype(np.float64) - 128.0) / 128.0
    else:
        x = frames.astype(np.float64) / float(2 ** (info.bits - 1))
    mono = x[:, 0] if info.channels == 1 else x.mean(axis=1)
    return mono.astype(np.float32)
