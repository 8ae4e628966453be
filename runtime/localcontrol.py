"""Commands from a local user: the terminal, stdin, a file or a FIFO (``spikewire run --learn``).

:class:`CommandLines` reads text lines (``label seven 12``, ``learn off``, ``stretches``; the syntax
is :func:`spikewire.control.parse_command_line`, docs/runtime.md "Commands from the terminal") in a
daemon thread and hands each to a :class:`~spikewire.control.ControlChannel` of the pipeline, so a
typed command goes through the same :class:`~spikewire.control.CommandRegistry`, validation, queue
and timeout as one from MQTT. Every line gets exactly one reply, given to ``reply(doc)`` on the
event loop: ``{"event": "reply", "cmd", "id", "ok", "result"|"error"}``. No I/O other than reading;
the caller prints (runtime/cli.py).

Bounds: a line is at most ``MAX_COMMAND_LINE`` characters (a longer one is answered with an error
and skipped to its end); the reader waits for the loop to take each line (back-pressure), and the
channel holds at most its ``queue`` commands (more are answered ``busy``).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import stat
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from .control import MAX_COMMAND_LINE, ControlChannel, ControlPayloadError, parse_command_line

log = logging.getLogger(__name__)

__all__ = ["CommandLines", "stdin_is_usable"]


def stdin_is_usable(fd: int = 0) -> bool:
    """False when reading ``fd`` would stop the process: a terminal of which it is not in the
    foreground (``spikewire run --learn &``: reading would raise SIGTTIN)."""
    try:
        if os.isatty(fd):
            return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    return True


class CommandLines:
    """Command lines from ``path`` (a FIFO is opened again after each writer closes it; a regular
    file is read once) or from the file descriptor ``fd`` (default: stdin) into ``channel``."""

    def __init__(self, channel: ControlChannel, reply: Callable[[dict], None], *, path: str | os.PathLike | None = None,
                 fd: int | None = None):
        self.channel = channel
        self.reply = reply
        self.path = Path(path) if path is not None else None
        self.fd = fd
        self.counters = {"lines": 0, "commands": 0, "errors": 0}
        self._ids = itertools.count(1)
        self._cmds: dict[int, str] = {}
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def spec(self) -> str:
        return str(self.path) if self.path is not None else "stdin"

    # -- the loop side ----------------------------------------------------------------------------
    def on_reply(self, data: bytes) -> None:
        """The channel's ``reply`` callback: the encoded reply, with the command's name added."""
        doc = json.loads(data)
        if not doc.get("ok"):
            self.counters["errors"] += 1
        self.reply({"event": "reply", "cmd": self._cmds.pop(doc.get("id"), None), **doc})

    def _error(self, rid: int, cmd: str | None, message: str) -> None:
        self.counters["errors"] += 1
        self.reply({"event": "reply", "cmd": cmd, "id": rid, "ok": False, "error": message})

    def take(self, line: str) -> None:
        """One line, on the event loop: parsed, then submitted to the channel (or answered at once)."""
        self.counters["lines"] += 1
        rid = next(self._ids)
        try:
            doc = parse_command_line(line, rid)
        except ControlPayloadError as e:
            self._error(rid, line.split()[0] if line.split() else None, str(e))
            return
        if doc is None:
            return
        cmd = doc.get("cmd")
        if cmd == "help":
            self.reply({"event": "reply", "cmd": "help", "id": rid, "ok": True,
                        "result": {"commands": self.channel.registry.help(),
                                   "syntax": "learn on|off, label WORD [ID], reward +1|-1 [ID], save, revert, "
                                             "stretches, status, CMD KEY=VALUE ..., or a JSON request"}})
            return
        self.counters["commands"] += 1
        self._cmds[doc.get("id")] = cmd if isinstance(cmd, str) else None
        if len(self._cmds) > 4096:          # ids whose reply never came (cannot happen: every request is answered)
            self._cmds.pop(next(iter(self._cmds)))
        self.channel.submit(json.dumps(doc))

    # -- the reader thread ------------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._read_all, name=f"spikewire-commands:{self.spec}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Lines read from now on are ignored (the daemon thread may stay blocked in a read)."""
        self._stop.set()

    def _deliver(self, line: str | None, error: str | None = None) -> None:
        async def put() -> None:
            if self._stop.is_set():
                return
            if error is None:
                self.take(line)
            else:
                self.counters["lines"] += 1
                self._error(next(self._ids), None, error)
        try:
            asyncio.run_coroutine_threadsafe(put(), self._loop).result()
        except RuntimeError:                 # the loop has closed
            self._stop.set()

    def _read_stream(self, f) -> None:
        while not self._stop.is_set():
            raw = f.readline(MAX_COMMAND_LINE + 1)
            if not raw:
                return
            if len(raw) > MAX_COMMAND_LINE and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):      # skip the rest of the long line
                    raw = f.readline(MAX_COMMAND_LINE + 1)
                self._deliver(None, f"command line longer than {MAX_COMMAND_LINE} characters")
                continue
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                self._deliver(None, "command line is not UTF-8")
                continue
            self._deliver(line)

    def _read_all(self) -> None:
        try:
            if self.path is None:
                fd = self.fd if self.fd is not None else sys.stdin.fileno()
                with os.fdopen(fd, "rb", closefd=False) as f:
                    self._read_stream(f)
                return
            while not self._stop.is_set():
                fifo = stat.S_ISFIFO(os.stat(self.path).st_mode)
                with open(self.path, "rb") as f:     # a FIFO: waits for a writer
                    self._read_stream(f)
                if not fifo:
                    return
        except OSError as e:
            if not self._stop.is_set():
                log.error("commands: cannot read %s: %s", self.spec, e)
