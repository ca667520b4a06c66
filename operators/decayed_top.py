"""Streaming popularity: per key, the top items by time-decayed count, re-emitted at most every so often.

The per-key core is :class:`state.top_counts.DecayedCounts` (event-time decay,
bounded state). A key's ranking is emitted when it has changed and
``emit_every`` (system time) has passed since its last emission, so downstream
consumers (e.g. every replica of an index) get a few updates a second, not one
per event.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from operators.clock import Clock, utc_now
from state.top_counts import DecayedCounts

X = TypeVar("X")

Ranking = tuple[tuple[str, float], ...]


class _DecayedTopLogic(StatefulBatchLogic[X, Ranking, dict[str, Any]]):
    def __init__(
        self,
        getters: tuple[Callable[[X], str], Callable[[X], float], Callable[[X], float]],
        half_life: timedelta,
        top_n: int,
        capacity: int,
        emit_every: timedelta,
        resume: dict[str, Any] | None,
        now_getter: Clock,
    ) -> None:
        self.item, self.weight, self.ts = getters
        self.counts = DecayedCounts(half_life.total_seconds(), capacity, resume)
        self.top_n = top_n
        self.emit_every = emit_every
        self.now = now_getter
        self.next_emit = now_getter()
        self.dirty = False

    def _maybe_emit(self) -> list[Ranking]:
        now = self.now()
        if not self.dirty or now < self.next_emit:
            return []
        self.dirty = False
        self.next_emit = now + self.emit_every
        return [tuple(self.counts.top(self.top_n))]

    def on_batch(self, values: list[X]) -> tuple[list[Ranking], bool]:
        for x in values:
            self.counts.add(self.item(x), self.weight(x), self.ts(x))
        self.dirty = True
        return self._maybe_emit(), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[Ranking], bool]:
        return self._maybe_emit(), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return self.next_emit if self.dirty else None

    def snapshot(self) -> dict[str, Any]:
        return self.counts.state()


@operator
def decayed_top(
    step_id: str,
    up: KeyedStream[X],
    item_getter: Callable[[X], str],
    weight_getter: Callable[[X], float],
    ts_getter: Callable[[X], float],
    half_life: timedelta = timedelta(minutes=15),
    top_n: int = 100,
    capacity: int = 1000,
    emit_every: timedelta = timedelta(seconds=1),
    now_getter: Clock = utc_now,
) -> KeyedStream[Ranking]:
    """Per key, the ``top_n`` items by decayed weight (``ts_getter`` gives event time in seconds).

    ```python
    popular = decayed_top("popular", by_category, lambda e: e.item_id, lambda e: 1.0, lambda e: e.t_s)
    ```
    """
    getters = (item_getter, weight_getter, ts_getter)

    def builder(resume: dict[str, Any] | None) -> _DecayedTopLogic[X]:
        return _DecayedTopLogic(getters, half_life, top_n, capacity, emit_every, resume, now_getter)

    return op.stateful_batch("top", up, builder)
