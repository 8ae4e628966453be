"""The core's state blob, version 2 (docs/model-format.md, "Core state blob").

C writes and reads it (``sw_core_save_state`` / ``sw_core_load_state``); this module
is the same format in Python, for two jobs: adding and reading sections the C core
does not know (learning traces, shadow weights: mark them optional so the core
skips them), and the numpy reference's own save/load (``ReferenceCore``), which must
give the same bytes as C.

Layout, little-endian::

    header   b"SWST"  version u32 = 2  total length u64
    section  tag (4 ASCII bytes)  flags u32 (bit 0 = required)  length u64  payload
    ...
    trailer  CRC-32 u32 (IEEE 802.3, = zlib.crc32) of every byte before it

A loader rejects a bad magic, a version other than 2 (version 1 blobs had no checksum),
a length field that differs from the size, a checksum mismatch, malformed section
framing, and unknown *required* sections; unknown optional sections are skipped.
"""
from __future__ import annotations

import struct
import zlib
from typing import Iterable, NamedTuple

import numpy as np

MAGIC = b"SWST"
VERSION = 2
REQUIRED = 1
CORE, WGHT = "CORE", "WGHT"
_HDR = struct.Struct("<4sIQ")
_SEC = struct.Struct("<4sIQ")


class StateBlobError(ValueError):
    """A state blob that is not a valid version-2 blob."""


class Section(NamedTuple):
    tag: str  # four ASCII characters
    required: bool
    payload: bytes


def _tag_bytes(tag: str) -> bytes:
    b = tag.encode("ascii") if isinstance(tag, str) else b""
    if len(b) != 4 or not all(0x20 < c < 0x7F for c in b):
        raise ValueError(f"a section tag is four printable ASCII characters, got {tag!r}")
    return b


def build(sections: Iterable[Section]) -> bytes:
    """A blob of these sections, in this order (header, length and CRC computed here)."""
    body = bytearray()
    seen = set()
    for s in sections:
        tag = _tag_bytes(s.tag)
        if tag in seen:
            raise ValueError(f"section {s.tag!r} twice")
        seen.add(tag)
        body += _SEC.pack(tag, REQUIRED if s.required else 0, len(s.payload)) + bytes(s.payload)
    blob = bytearray(_HDR.pack(MAGIC, VERSION, _HDR.size + len(body) + 4)) + body
    blob += struct.pack("<I", zlib.crc32(blob))
    return bytes(blob)


def parse(blob: bytes) -> list[Section]:
    """The sections of a blob, after checking its header, length, CRC and framing."""
    b = bytes(blob)
    if len(b) < _HDR.size + 4:
        raise StateBlobError("state blob is too short for its header")
    magic, version, length = _HDR.unpack_from(b)
    if magic != MAGIC:
        raise StateBlobError("not a spikewire state blob (bad magic)")
    if version == 1:
        raise StateBlobError("state blob version 1 (no checksum, before ABI 2) is not read by this "
                             "version; save the state again")
    if version != VERSION:
        raise StateBlobError(f"state blob version {version} is unknown (this version reads {VERSION})")
    if length != len(b):
        raise StateBlobError(f"state blob length field says {length} bytes, the blob has {len(b)}")
    (crc,) = struct.unpack_from("<I", b, len(b) - 4)
    if zlib.crc32(b[:-4]) != crc:
        raise StateBlobError("state blob checksum (CRC-32) does not match: the blob is corrupt")
    out, off, end = [], _HDR.size, len(b) - 4
    while off < end:
        if end - off < _SEC.size:
            raise StateBlobError("state blob ends inside a section header")
        tag, flags, n = _SEC.unpack_from(b, off)
        if flags & ~REQUIRED:
            raise StateBlobError(f"section {tag!r} has unknown flags {flags:#x}")
        if n > end - off - _SEC.size:
            raise StateBlobError(f"section {tag!r} runs past the end of the blob")
        try:
            name = tag.decode("ascii")
        except UnicodeDecodeError:
            raise StateBlobError(f"section tag {tag!r} is not ASCII") from None
        if any(s.tag == name for s in out):
            raise StateBlobError(f"section {name!r} twice")
        out.append(Section(name, bool(flags & REQUIRED), b[off + _SEC.size: off + _SEC.size + n]))
        off += _SEC.size + n
    return out


def with_sections(blob: bytes, extra: Iterable[Section]) -> bytes:
    """``blob`` with ``extra`` sections added (a section of the same tag is replaced)."""
    extra = list(extra)
    tags = {s.tag for s in extra}
    if tags & {CORE, WGHT}:
        raise ValueError("CORE and WGHT belong to the core; add sections of your own tags")
    return build([s for s in parse(blob) if s.tag not in tags] + extra)


def section(blob: bytes, tag: str) -> Section | None:
    """The section ``tag`` of a (checked) blob, or None."""
    return next((s for s in parse(blob) if s.tag == tag), None)


class CoreSection(NamedTuple):
    """The decoded CORE section."""
    n_in: int
    n_hid: int
    n_out: int
    steps: int
    h_I: np.ndarray  # int16 [n_hid]
    h_V: np.ndarray  # int16 [n_hid]
    h_ref: np.ndarray  # uint8 [n_hid]
    z: np.ndarray  # uint8 [n_hid] spikes of the last step
    o_I: np.ndarray  # int16 [n_out]
    o_V: np.ndarray  # int16 [n_out]


def encode_core(s: CoreSection) -> bytes:
    le16 = lambda a: np.ascontiguousarray(a, dtype="<i2").tobytes()  # noqa: E731
    u8 = lambda a: np.ascontiguousarray(a, dtype=np.uint8).tobytes()  # noqa: E731
    return (struct.pack("<IIIQ", s.n_in, s.n_hid, s.n_out, s.steps) + le16(s.h_I) + le16(s.h_V)
            + u8(s.h_ref) + u8(s.z) + le16(s.o_I) + le16(s.o_V))


def decode_core(payload: bytes) -> CoreSection:
    if len(payload) < 20:
        raise StateBlobError("CORE section is too short")
    n_in, nh, no, steps = struct.unpack_from("<IIIQ", payload)
    if len(payload) != 20 + 6 * nh + 4 * no:
        raise StateBlobError("CORE section length does not match its sizes")
    off = 20

    def take(n, dt):
        nonlocal off
        a = np.frombuffer(payload, dtype=dt, count=n, offset=off)
        off += a.nbytes
        return a.astype(np.dtype(dt).newbyteorder("="))

    return CoreSection(n_in, nh, no, steps, take(nh, "<i2"), take(nh, "<i2"), take(nh, np.uint8),
                       take(nh, np.uint8), take(no, "<i2"), take(no, "<i2"))
