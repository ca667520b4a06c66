"""Per-key sliding event-time window features, computed for every event as it arrives.

Bytewax's window operators emit when a window closes; fraud scoring needs the
features *of this event* now. :class:`SlidingAggregates` keeps a key's recent
events sorted by event time and answers, for each new event at time ``t``, the
count and sum over ``(t - w, t]`` for each window ``w``, the distinct values of
an attribute over the longest window, and the seconds since the previous event.

Results depend only on the key's events in arrival order, never on wall-clock
time or on how other keys interleave, so a replay reproduces them exactly.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

E = TypeVar("E")

Features = tuple[float, ...]


@dataclass(frozen=True)
class WindowSpec:
    """Which aggregates to compute.

    ``windows`` maps a name to a length in seconds; every window yields
    ``<name>_count`` and ``<name>_sum``. ``distinct_window_s`` is the span for
    ``distinct``. ``gap_cap_s`` caps ``secs_since_prev`` (also its value when a
    key has no earlier event). Events older than the key's newest event minus
    ``allowed_lateness_s`` are late and are not aggregated.
    """

    windows: tuple[tuple[str, float], ...] = (("1m", 60.0), ("1h", 3600.0))
    distinct_window_s: float = 3600.0
    gap_cap_s: float = 3600.0
    allowed_lateness_s: float = 60.0
    max_events_per_key: int = 10_000

    @property
    def feature_names(self) -> tuple[str, ...]:
        names: list[str] = []
        for name, _ in self.windows:
            names += [f"{name}_count", f"{name}_sum"]
        return (*names, "distinct", "secs_since_prev")

    @property
    def horizon_s(self) -> float:
        return max([w for _, w in self.windows] + [self.distinct_window_s, self.gap_cap_s])


class SlidingAggregates:
    """One key's recent events and the features they give a new event.

    >>> agg = SlidingAggregates(WindowSpec())
    >>> agg.add(0.0, 10.0, "m1")
    (1.0, 10.0, 1.0, 10.0, 1.0, 3600.0)
    >>> agg.add(30.0, 5.0, "m2")
    (2.0, 15.0, 2.0, 15.0, 2.0, 30.0)
    >>> agg.add(100.0, 1.0, "m1")  # the earlier events have left the 1-minute window
    (1.0, 1.0, 3.0, 16.0, 2.0, 70.0)
    """

    __slots__ = ("spec", "times", "values", "tags", "newest", "keep_s")

    def __init__(self, spec: WindowSpec, state: tuple[list[float], list[float], list[Hashable], float] | None = None):
        self.spec = spec
        self.keep_s = spec.horizon_s + spec.allowed_lateness_s
        if state is None:
            self.times: list[float] = []
            self.values: list[float] = []
            self.tags: list[Hashable] = []
            self.newest = float("-inf")
        else:
            self.times, self.values, self.tags, self.newest = state

    def is_late(self, t: float) -> bool:
        return t < self.newest - self.spec.allowed_lateness_s

    def add(self, t: float, value: float, tag: Hashable) -> Features | None:
        """Add an event at ``t`` seconds; return its features, or None if it is late."""
        if self.is_late(t):
            return None
        times = self.times
        if not times or t >= times[-1]:
            i = len(times)
            times.append(t)
            self.values.append(value)
            self.tags.append(tag)
        else:
            i = bisect_right(times, t)
            times.insert(i, t)
            self.values.insert(i, value)
            self.tags.insert(i, tag)
        if t > self.newest:
            self.newest = t
        feats = self._features(t, i)
        self._evict()
        return feats

    def _features(self, t: float, i: int) -> Features:
        spec, times, values = self.spec, self.times, self.values
        hi = i + 1  # events at or before t (ties after i arrived later and are excluded)
        out: list[float] = []
        for _, w in spec.windows:
            lo = bisect_right(times, t - w, 0, hi)
            out.append(float(hi - lo))
            out.append(float(sum(values[lo:hi])))
        lo = bisect_right(times, t - spec.distinct_window_s, 0, hi)
        out.append(float(len(set(self.tags[lo:hi]))))
        gap = t - times[i - 1] if i > 0 else spec.gap_cap_s
        out.append(min(gap, spec.gap_cap_s))
        return tuple(out)

    def _evict(self) -> None:
        drop = bisect_right(self.times, self.newest - self.keep_s)
        drop = max(drop, len(self.times) - self.spec.max_events_per_key)
        if drop > 0:
            del self.times[:drop], self.values[:drop], self.tags[:drop]

    def state(self) -> tuple[list[float], list[float], list[Hashable], float]:
        return (self.times, self.values, self.tags, self.newest)


@dataclass(frozen=True)
class WindowOut(Generic[E]):
    """Streams out of :func:`sliding_features`: ``down`` (event, features) and ``late`` events."""

    down: KeyedStream[tuple[E, Features]]
    late: KeyedStream[E]


class _SlidingLogic(StatefulBatchLogic[E, tuple[E, Features | None], tuple]):
    def __init__(
        self,
        spec: WindowSpec,
        getters: tuple[Callable[[E], float], Callable[[E], float], Callable[[E], Hashable]],
        idle_timeout: timedelta,
        resume_state: tuple | None,
    ) -> None:
        self.agg = SlidingAggregates(spec, resume_state)
        self.ts_getter, self.value_getter, self.tag_getter = getters
        self.idle_timeout = idle_timeout
        self.expires_at = datetime.now(UTC) + idle_timeout

    def on_batch(self, values: list[E]) -> tuple[list[tuple[E, Features | None]], bool]:
        add, ts, value, tag = self.agg.add, self.ts_getter, self.value_getter, self.tag_getter
        out = [(ev, add(ts(ev), value(ev), tag(ev))) for ev in values]
        self.expires_at = datetime.now(UTC) + self.idle_timeout
        return out, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[tuple[E, Features | None]], bool]:
        return [], StatefulBatchLogic.DISCARD

    def notify_at(self) -> datetime | None:
        return self.expires_at

    def snapshot(self) -> tuple:
        return self.agg.state()


@operator
def sliding_features(
    step_id: str,
    up: KeyedStream[E],
    ts_getter: Callable[[E], float],
    value_getter: Callable[[E], float],
    tag_getter: Callable[[E], Hashable],
    spec: WindowSpec = WindowSpec(),
    idle_timeout: timedelta = timedelta(hours=1),
) -> WindowOut[E]:
    """Attach sliding-window features to every event of every key.

    ``ts_getter`` gives the event time in seconds, ``value_getter`` the value
    summed, ``tag_getter`` the attribute counted distinct. A key whose events
    stop for ``idle_timeout`` (system time) is dropped, which keeps state bounded;
    a key with no events left inside ``spec.horizon_s`` gives the same features as
    a dropped one, so expiry does not change results once the timeout is at least
    the horizon.

    ```python
    win = sliding_features("window", keyed, lambda e: e.t, lambda e: e.amount, lambda e: e.merchant)
    win.down  # KeyedStream[(event, (1m_count, 1m_sum, 1h_count, 1h_sum, distinct, secs_since_prev))]
    ```
    """
    getters = (ts_getter, value_getter, tag_getter)

    def builder(resume_state: tuple | None) -> _SlidingLogic[E]:
        return _SlidingLogic(spec, getters, idle_timeout, resume_state)

    out = op.stateful_batch("aggregate", up, builder)
    split = op.branch("split_late", out, lambda kv: kv[1][1] is not None)
    late = op.map_value("late", split.falses, lambda v: v[0])
    down = split.trues
    return WindowOut(down=down, late=late)  # type: ignore[arg-type]
