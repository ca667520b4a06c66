"""Garbage collection on a clock instead of on allocation counts.

CPython starts a young-generation collection whenever tracked allocations
outnumber deallocations by the gen-0 threshold. A flow keeps tens of
thousands of young objects alive at any moment (the events of the batches in
flight: window results, feature tuples, records waiting in a micro-batch), and
the counter is reset to zero at each collection while those objects die *after*
it, so their deaths never pay back the allocations of the next batches. The
collector therefore runs every couple of thousand events and walks ~50,000
live objects each time, collecting nothing. Measured on the fraud drain
(2026-11-30, 200,000 events, gen-0 threshold 50,000): 86 young and 4 middle
collections, 1.15 s of an 11 s drain (10% of the flow's CPU), 0 objects freed.

:class:`GcPacer` makes the cost proportional to time instead: automatic
collection is held back (a high gen-0 threshold stays as a backstop), and every
``interval_s`` a flow thread collects the young generations and then
*freezes* the survivors (``gc.freeze``: objects that lived through a
collection are window state or items about to leave, and later collections
need not walk them again; a frozen object is still freed by reference counting
when it dies). A collection then walks what was allocated since the previous
one and is still alive. Measured on the same drain: 56.8 -> 51.7 us of CPU per
event (3 runs each); pauses at a 1 s interval 30 ms median, 39 ms at most (8
collections, 2.3% of the drain's time), at 5 s 53-118 ms, at 0.25 s 19 ms
median but twice the total: the items in flight (~15 ms to walk) are paid for
at every collection, so the interval trades pause length against CPU. With
the allocation trigger the pauses were ~10 ms, eight to ten times a second.

What freezing gives up: a reference cycle that outlives one paced collection
and only then becomes garbage is not found by the young collections. Every
``full_interval_s`` the pacer unfreezes, runs a full collection and freezes
again, so such cycles are reclaimed; the flows make none on their hot path
(every collection above freed 0 objects), so this is a safety net. A full
collection walks every live object (all keyed state), so its pause grows with
the state: it runs rarely and is logged with its duration.

The flow threads call :meth:`GcPacer.tick` where they pass anyway (the Kafka
source does, at every poll: one clock read while nothing is due).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

BACKSTOP_THRESHOLD = 1_000_000  # gen-0 allocations before CPython collects on its own, while paced


@dataclass
class GcPacer:
    """Young collections every ``interval_s`` and a full one every ``full_interval_s`` (0: never), from
    :meth:`tick`. Inactive until :meth:`start`.

    >>> clock = [0.0]
    >>> pacer = GcPacer(interval_s=5.0, full_interval_s=60.0, clock=lambda: clock[0])
    >>> pacer.start()
    >>> pacer.tick(), pacer.young, pacer.full      # nothing due yet
    (None, 0, 0)
    >>> clock[0] = 5.0; pacer.tick(); pacer.young
    1
    >>> clock[0] = 61.0; pacer.tick(); pacer.young, pacer.full
    (1, 1)
    >>> pacer.stop()
    """

    interval_s: float = 1.0
    full_interval_s: float = 3600.0
    clock: Callable[[], float] = time.monotonic
    young: int = 0  # paced young collections so far
    full: int = 0  # full collections so far
    young_ms: float = 0.0  # their total duration
    full_ms: float = 0.0
    active: bool = False
    _young_due: float = 0.0
    _full_due: float = float("inf")
    _saved_threshold: tuple[int, int, int] = (700, 10, 10)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        """Freeze what exists now (start-up: models, libraries), hold back automatic collection, start the
        clocks."""
        if self.interval_s <= 0:
            raise ValueError("GcPacer needs interval_s > 0 (leave it unstarted for CPython's own collection)")
        self._saved_threshold = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(BACKSTOP_THRESHOLD, *self._saved_threshold[1:])
        now = self.clock()
        self._young_due = now + self.interval_s
        self._full_due = now + self.full_interval_s if self.full_interval_s > 0 else float("inf")
        self.active = True

    def stop(self) -> None:
        """Back to CPython's own thresholds (frozen objects stay frozen)."""
        self.active = False
        gc.set_threshold(*self._saved_threshold)

    def tick(self) -> None:
        """Collect if a collection is due (call from flow threads, as often as convenient)."""
        if not self.active:
            return
        now = self.clock()
        if now < self._young_due:
            return
        if not self._lock.acquire(blocking=False):  # another flow thread is collecting
            return
        try:
            if now >= self._full_due:
                self._collect_full(now)
            else:
                self._collect_young(now)
        finally:
            self._lock.release()

    def _collect_young(self, now: float) -> None:
        started = time.perf_counter()
        gc.collect(1)
        gc.freeze()
        self.young += 1
        self.young_ms += (time.perf_counter() - started) * 1000.0
        self._young_due = now + self.interval_s

    def _collect_full(self, now: float) -> None:
        started = time.perf_counter()
        gc.unfreeze()
        freed = gc.collect()
        gc.freeze()
        took_ms = (time.perf_counter() - started) * 1000.0
        self.full += 1
        self.full_ms += took_ms
        log.info("full garbage collection: %d objects freed in %.0f ms", freed, took_ms)
        self._young_due = now + self.interval_s
        self._full_due = now + self.full_interval_s


PACER = GcPacer()
