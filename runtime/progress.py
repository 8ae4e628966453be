"""Progress of long work (epochs, folds, thousands of files): a bar with rate and time left on a
terminal, plain log lines otherwise (pipes, CI logs). No dependency; the clock can be injected."""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable, Optional, TextIO


def _fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def _fmt_rate(rate: float) -> str:
    """Items per second, or seconds per item when that reads better (slow items: epochs, folds)."""
    return f"{rate:.2f}/s" if rate >= 1 or rate <= 0 else f"{1 / rate:.1f} s each"


class Progress:
    """``with Progress(n, "eval") as p: ... p.update()``.

    On a tty the line is redrawn in place (``\\r``, at most every ``min_interval`` seconds, and at
    the end); elsewhere one line is written each time another ``every`` fraction of the work is
    done, and at the end.  ``tty`` overrides the stream's own answer (``False``: plain lines, e.g.
    an outer loop whose inner loop draws the bar).  ``desc`` may be changed between updates;
    ``update(0)`` redraws without counting.
    """

    def __init__(self, total: int, desc: str = "", stream: TextIO | None = None, width: int = 30,
                 every: float = 0.1, clock: Callable[[], float] = time.monotonic, min_interval: float = 0.1,
                 tty: Optional[bool] = None):
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            raise ValueError(f"total must be a non-negative int, got {total!r}")
        if not 0 < every <= 1:
            raise ValueError(f"every must be in (0, 1], got {every!r}")
        if not min_interval >= 0:
            raise ValueError(f"min_interval must be >= 0 seconds, got {min_interval!r}")
        self.total, self.desc, self.width, self.every, self.clock = total, desc, width, every, clock
        self.min_interval = min_interval
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else bool(tty)
        self.n = 0
        self.t0 = clock()
        self._next_log = every
        self._drawn: Optional[float] = None  # clock at the last redraw (tty)
        self._width_drawn = 0
        self._closed = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def text(self) -> str:
        """The status line: count, percentage, rate, elapsed and time left."""
        dt = max(self.clock() - self.t0, 0.0)
        rate = self.n / dt if dt > 0 else 0.0
        frac = self.n / self.total if self.total else 1.0
        left = (self.total - self.n) / rate if rate > 0 else float("nan")
        eta = _fmt_time(left) if left == left else "?"
        head = f"{self.desc}: " if self.desc else ""
        if self.tty:
            full = int(frac * self.width)
            head += "[" + "#" * full + "." * (self.width - full) + "] "
        return f"{head}{self.n}/{self.total} {100 * frac:.0f}% {_fmt_rate(rate)} elapsed {_fmt_time(dt)} left {eta}"

    def _draw(self) -> None:
        line = self.text()
        pad = " " * max(0, self._width_drawn - len(line))  # a shorter line must not leave old text behind
        self.stream.write("\r" + line + pad)
        self.stream.flush()
        self._width_drawn = len(line)
        self._drawn = self.clock()

    def update(self, k: int = 1) -> None:
        if k < 0:
            raise ValueError(f"update by a non-negative count, got {k!r}")
        self.n = min(self.n + k, self.total)
        if self.tty:
            if self._drawn is None or self.clock() - self._drawn >= self.min_interval:
                self._draw()
        elif self.total and self.n / self.total >= self._next_log - 1e-12 and self.n < self.total:
            self.stream.write(self.text() + "\n")
            while self._next_log <= self.n / self.total + 1e-12:
                self._next_log += self.every

    def clear(self) -> None:
        """On a tty, blank the bar's line so a log line can be written there (the next update
        draws the bar again); nothing elsewhere."""
        if self.tty and self._width_drawn:
            self.stream.write("\r" + " " * self._width_drawn + "\r")
            self.stream.flush()
            self._width_drawn = 0
            self._drawn = None

    def close(self) -> None:
        """The final line (once), ending the bar on a tty."""
        if self._closed:
            return
        self._closed = True
        if self.tty:
            self._draw()
            self.stream.write("\n")
        else:
            self.stream.write(self.text() + "\n")
        self.stream.flush()


def run_logging(log_file: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """The log lines of a long run (training, evaluation): ``level`` and up to stderr and, when
    given, to ``log_file`` too.  It replaces the root logger's handlers (``force``): ``spikewire``
    configures logging before it hands over to a tool, and a plain ``logging.basicConfig`` is then
    a no-op (no train.log, no INFO lines)."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", handlers=handlers, force=True)
