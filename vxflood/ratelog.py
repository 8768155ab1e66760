"""Rate-limited logging: at most one line per key per interval, with a count.

Both daemons log what they drop off the network through this, so a flood of bad
datagrams costs one line per reason and sender every interval, never one per
datagram.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._max_keys = max_keys
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log unless `key` was logged within the interval; True when a line was written."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        if last is None and len(self._last) >= self._max_keys:
            # bounded memory whatever the senders: forget everyone rather than grow
            self._last.clear()
            self._suppressed.clear()
        self._last[key] = now
        dropped = self._suppressed.pop(key, 0)
        if dropped:
            self._log.log(level, msg + " (and %d more like it since)", *args, dropped)
        else:
            self._log.log(level, msg, *args)
        return True
