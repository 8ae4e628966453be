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
ignored.

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

__all__ = ["AudioFileError", "WavInfo", "read_wav", "read_wav_int16", "read_wav_info", "write_wav"]

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
    """Parse and validate a WAV file and return its format (samples are decoded too)."""
    return _read_frames(path, allow_truncated)[1]


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


def _read_frames(path: PathLike, allow_truncated: bool) -> tuple[np.ndarray, WavInfo]:
    """Return the raw samples as an array of shape (frames, channels) and the format."""
    with open(path, "rb") as f:
        raw = f.read()
    n = len(raw)
    if n < 12:
        raise AudioFileError(path, f"file is {n} bytes, too short to be a WAV file")
    riff, _riff_size, wave = struct.unpack_from("<4sI4s", raw)
    if riff in (b"RIFX", b"RF64"):
        raise AudioFileError(path, f"unsupported RIFF variant {riff!r} (only little-endian RIFF)")
    if riff != b"RIFF" or wave != b"WAVE":
        raise AudioFileError(path, f"not a WAV file (starts with {raw[:12]!r}, expected b'RIFF....WAVE')")

    fmt = None
    data_start = data_size = None
    truncated = False
    pos = 12
    while pos < n and (fmt is None or data_start is None):
        if pos + 8 > n:
            raise AudioFileError(path, f"truncated chunk header at offset {pos} ({n - pos} bytes left)")
        cid, size = struct.unpack_from("<4sI", raw, pos)
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
            fmt = _parse_fmt(raw[body_start:body_start + size], path)
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
    body = raw[data_start:data_start + frames * block_align]
    if tag == WAVE_FORMAT_IEEE_FLOAT:
        samples = np.frombuffer(body, dtype="<f4" if bits == 32 else "<f8")
    elif bits == 8:
        samples = np.frombuffer(body, dtype=np.uint8)
    elif bits == 16:
        samples = np.frombuffer(body, dtype="<i2")
    elif bits == 24:
        b = np.frombuffer(body, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        samples = (v ^ 0x800000) - 0x800000  # sign-extend 24 -> 32 bits
    else:
        samples = np.frombuffer(body, dtype="<i4")
    info = WavInfo(tag, channels, rate, bits, block_align, frames, extensible, truncated)
    return samples.reshape(frames, channels), info


def _to_mono_float(frames: np.ndarray, info: WavInfo, path: PathLike) -> np.ndarray:
    if info.format_tag == WAVE_FORMAT_IEEE_FLOAT:
        x = frames.astype(np.float64)
        if not np.all(np.isfinite(x)):
            bad = int(np.argmin(np.isfinite(x).all(axis=1)))
            raise AudioFileError(path, f"non-finite float sample in frame {bad}")
        x = np.clip(x, -1.0, 1.0)
    elif info.bits == 8:
        x = (frames.astype(np.float64) - 128.0) / 128.0
    else:
        x = frames.astype(np.float64) / float(2 ** (info.bits - 1))
    mono = x[:, 0] if info.channels == 1 else x.mean(axis=1)
    return mono.astype(np.float32)
