"""Rate-limited warnings for things a remote party can repeat at will (failed connects, malformed requests).

A broker that never comes up, or a client flooding ``control`` with garbage, must not flood the log: at most
one warning per ``interval`` seconds goes out, the others go to the debug log and are counted (``counts[key]``),
and the next warning says how many were left out.
"""
from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, *, interval: float = 1.0, counts: dict[str, int] | None = None,
                 key: str = "suppressed_warnings") -> None:
        self.logger = logger
        self.interval = float(interval)
        self.counts = counts if counts is not None else {}
        self.key = key
        self.counts.setdefault(key, 0)
        self._last = -float("inf")
        self._pending = 0

    def warning(self, msg: str, *args: Any) -> bool:
        """Log ``msg % args`` as a warning unless one went out less than ``interval`` s ago; True if logged."""
        now = time.monotonic()
        if now - self._last < self.interval:
            self.counts[self.key] += 1
            self._pending += 1
            self.logger.debug(msg, *args)
            return False
        self._last = now
        if self._pending:
            msg += " (%d similar warning(s) not logged)"
            args = (*args, self._pending)
            self._pending = 0
        self.logger.warning(msg, *args)
        return True
