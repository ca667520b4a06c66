"""A one-line progress display for long sends and drains: rate, done/total, ETA.

Shown only on a terminal (it rewrites one line with ``\\r``); in CI logs and
pipes it prints nothing, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Call :meth:`update` as often as you like; it redraws at most every ``every_s``."""

    def __init__(
        self, total: int, label: str, stream: TextIO | None = None, enabled: bool | None = None, every_s: float = 0.5
    ) -> None:
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.every_s = every_s
        self.started = time.monotonic()
        self._drawn = 0.0

    def line(self, done: int, now: float) -> str:
        """The status text for ``done`` items at monotonic time ``now``.

        >>> p = Progress(1000, "sent", enabled=False)
        >>> p.started = 0.0
        >>> p.line(250, 5.0)
        'sent 250/1,000 (25%) 50/s, ETA 15s'
        """
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        eta_text = f"{eta:.0f}s" if eta != float("inf") else "?"
        return f"{self.label} {done:,}/{self.total:,} ({100 * done / max(self.total, 1):.0f}%) {rate:,.0f}/s, ETA {eta_text}"

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._drawn >= self.every_s or done >= self.total:
            self._drawn = now
            self.stream.write("\r" + self.line(done, now) + "\033[K")
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
