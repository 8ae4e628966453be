"""Progress of long work (epochs, folds, thousands of files): a bar with rate and time left on a
terminal, plain log lines otherwise (pipes, CI logs). No dependency; the clock can be injected."""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def _fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class Progress:
    """``with Progress(n, "eval") as p: ... p.update()``.

    On a tty the line is redrawn in place (``\\r``); elsewhere one line is written each time another
    ``every`` fraction of the work is done, and at the end.
    """

    def __init__(self, total: int, desc: str = "", stream: TextIO | None = None, width: int = 30,
                 every: float = 0.1, clock: Callable[[], float] = time.monotonic):
        if not isinstance(total, int) or isinstance(total, bool) or total < 0:
            raise ValueError(f"total must be a non-negative int, got {total!r}")
        if not 0 < every <= 1:
            raise ValueError(f"every must be in (0, 1], got {every!r}")
        self.total, self.desc, self.width, self.every, self.clock = total, desc, width, every, clock
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.n = 0
        self.t0 = clock()
        self._next_log = every

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
        return f"{head}{self.n}/{self.total} {100 * frac:.0f}% {rate:.2f}/s elapsed {_fmt_time(dt)} left {eta}"

    def update(self, k: int = 1) -> None:
        if k < 0:
            raise ValueError(f"update by a non-negative count, got {k!r}")
        self.n = min(self.n + k, self.total)
        if self.tty:
            self.stream.write("\r" + self.text())
            self.stream.flush()
        elif self.total and self.n / self.total >= self._next_log - 1e-12 and self.n < self.total:
            self.stream.write(self.text() + "\n")
            while self._next_log <= self.n / self.total + 1e-12:
                self._next_log += self.every

    def close(self) -> None:
        """The final line (once), ending the bar on a tty."""
        if self.tty:
            self.stream.write("\r" + self.text() + "\n")
        else:
            self.stream.write(self.text() + "\n")
        self.stream.flush()
