"""Client strings in log lines: cut short and escaped, and refusals logged at a bounded rate.

A topic or token comes from anyone on the internet. Written as it is, a 5 MB topic is 5 MB of
log and a newline in it forges a log line; so every client string goes through ``printable``,
and a flood of refusals becomes one line per reason and period with a count of the rest.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

#: Client strings longer than this are cut, with the original length noted.
MAX_LOGGED_CHARS = 120


def first_line(exc: BaseException) -> str:
    """An error's first line, for a log line or a health reason (its type when it has no text)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def printable(value: object, limit: int = MAX_LOGGED_CHARS) -> str:
    """``value`` as one line of at most ``limit`` characters, control characters escaped."""
    text = value if isinstance(value, str) else str(value)
    cut = len(text) > limit
    shown = text[:limit]
    if not shown.isprintable():
        shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in shown)
    if cut:
        shown += f"... ({len(text)} chars)"
    return shown


class RateLimitedLog:
    """At most one line per key and ``period_s``; the next line says how many were left out."""

    def __init__(
        self,
        logger: logging.Logger,
        period_s: float = 10.0,
        max_keys: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.period_s = period_s
        self.max_keys = max_keys
        self.clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, *args: object) -> bool:
        """Log unless ``key`` was logged within the period; True when a line was written."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.period_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        if last is None and len(self._last) >= self.max_keys:
            # Bounded memory: forget the keys whose period is over.
            self._last = {k: t for k, t in self._last.items() if now - t < self.period_s}
            self._suppressed = {k: n for k, n in self._suppressed.items() if k in self._last}
            if len(self._last) >= self.max_keys:
                return False
        self._last[key] = now
        left_out = self._suppressed.pop(key, 0)
        if left_out:
            message += f" (and {left_out} more like it in the last {self.period_s:.0f} s)"
        self.logger.log(level, message, *args)
        return True


_TOKEN = re.compile(
    r"((?:apikey|access_token|token)=)[^&\s\"']+|(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE
)


def redact(text: str) -> str:
    return _TOKEN.sub(lambda m: (m.group(1) or m.group(2)) + "[redacted]", text)


class RedactTokens(logging.Filter):
    """Removes tokens from every record a handler writes (aiohttp's access log prints the URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
