"""Per-key sliding event-time window features, computed for every event as it arrives.

Bytewax's window operators emit when a window closes; fraud scoring needs the
features *of this event* now. The per-key core is
:class:`state.windows.SlidingAggregates` (counts and sums over several windows,
distinct values, seconds since the previous event); this module runs one per
key as checkpointed state and routes events that are too late.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Generic, TypeVar

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from operators.clock import Clock, utc_now
from state.windows import Features, SlidingAggregates, WindowSpec

E = TypeVar("E")

__all__ = ["Features", "SlidingAggregates", "WindowOut", "WindowSpec", "sliding_features"]


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
        now_getter: Clock,
    ) -> None:
        self.agg = SlidingAggregates(spec, resume_state)
        self.ts_getter, self.value_getter, self.tag_getter = getters
        self.idle_timeout = idle_timeout
        self.now = now_getter
        self.expires_at = now_getter() + idle_timeout

    def on_batch(self, values: list[E]) -> tuple[list[tuple[E, Features | None]], bool]:
        add, ts, value, tag = self.agg.add, self.ts_getter, self.value_getter, self.tag_getter
        out = [(ev, add(ts(ev), value(ev), tag(ev))) for ev in values]
        self.expires_at = self.now() + self.idle_timeout
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
    now_getter: Clock = utc_now,
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
        return _SlidingLogic(spec, getters, idle_timeout, resume_state, now_getter)

    out = op.stateful_batch("aggregate", up, builder)
    split = op.branch("split_late", out, lambda kv: kv[1][1] is not None)
    late = op.map_value("late", split.falses, lambda v: v[0])
    down = split.trues
    return WindowOut(down=down, late=late)  # type: ignore[arg-type]
