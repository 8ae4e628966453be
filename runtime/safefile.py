"""Opening files whose path the operator chose but whose bytes are not trusted (docs/security.md).

Every reader of a file named on the command line, in device.toml or by a control request (model
files, WAV files, checkpoints, the run config, the MQTT password file, spike recordings) opens it
here: the file must be a regular file, checked with ``fstat`` on a descriptor opened without
blocking, so a FIFO (which would block ``open`` until a writer comes) or a device such as
``/dev/zero`` (which never ends) is refused at once; and its size is checked against the reader's
limit before anything of that size is allocated. Errors are ``OSError`` subclasses carrying the
path, so callers that already handle "cannot read the file" handle these too.
"""
from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

__all__ = ["FileTooLargeError", "NotRegularFileError", "check_regular", "open_regular", "read_regular"]

PathLike = str | os.PathLike


class NotRegularFileError(OSError):
    """The path is a FIFO, a device, a socket or a folder, not a regular file."""


class FileTooLargeError(OSError):
    """The file is larger than the reader's limit."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _check(st: os.stat_result, path: PathLike, max_bytes: int | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = _kind(st.st_mode)
        raise NotRegularFileError(errno.EINVAL, "not a regular file" + ("" if kind.startswith("not") else f" ({kind})"),
                                  os.fspath(path))
    if max_bytes is not None and st.st_size > max_bytes:
        raise FileTooLargeError(errno.EFBIG, f"file is {st.st_size} bytes, more than the {max_bytes}-byte limit",
                                os.fspath(path))


def check_regular(path: PathLike, max_bytes: int | None = None) -> None:
    """Raise unless ``path`` is a regular file of at most ``max_bytes`` (``stat`` only, nothing opened).
    For files another library opens by name (TLS CA and certificate files)."""
    _check(os.stat(path), path, max_bytes)


def open_regular(path: PathLike, max_bytes: int | None = None) -> BinaryIO:
    """``open(path, "rb")`` of a regular file of at most ``max_bytes`` bytes; never blocks on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        _check(os.fstat(fd), path, max_bytes)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: PathLike, max_bytes: int) -> bytes:
    """The whole content of a regular file of at most ``max_bytes`` bytes (also if it grows meanwhile)."""
    with open_regular(path, max_bytes) as f:
        # as many bytes as fstat said (+1 to see growth), not max_bytes: read(n) allocates n at once
        want = os.fstat(f.fileno()).st_size + 1
        parts = [f.read(want)]
        total = len(parts[0])
        while total == want and total <= max_bytes and parts[-1]:  # it grew: go on, in bounded steps
            parts.append(f.read(min(1 << 16, max_bytes + 1 - total)))
            want = total = total + len(parts[-1])
        data = b"".join(parts)
    if len(data) > max_bytes:
        raise FileTooLargeError(errno.EFBIG, f"file grew beyond the {max_bytes}-byte limit while read",
                                os.fspath(path))
    return data
