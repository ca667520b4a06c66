"""Per-key sliding event-time window features, computed for every event as it arrives.

Bytewax's window operators emit when a window closes; fraud scoring needs the
features *of this event* now. The per-key core is
:class:`state.windows.SlidingAggregates` (counts and sums over several windows,
distinct values, seconds since the previous event); this module runs one per
key as checkpointed state and routes events that are too late.

Instrumented as stage ``step_id``: every event is counted, and those that did
not simply join their window by status (``sluice_window_events_total``). A call
handles one key, about one event, so its time (and, given an ``origin``, the
events' age) is recorded for one call in ``TIMED_EVERY`` only (every call while tracing is on,
so that each traced event gets its span).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Generic, TypeVar

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from operators import tracing
from operators.clock import Clock, utc_now
from operators.metrics import PROCESS, WINDOW_EVENTS
from operators.probes import Origin, StageProbe
from state.windows import Features, Recent, SlidingAggregates, WindowSpec, WindowState

E = TypeVar("E")
TIMED_EVERY = 32

__all__ = ["Features", "Recent", "SlidingAggregates", "WindowSpec", "WindowStatus", "Windowed", "sliding_features"]


class WindowStatus(StrEnum):
    """How an event met its key's window."""

    OK = "ok"  # added; features include it
    LATE = "late"  # older than the newest event minus the allowed lateness: features from the window, not added
    AHEAD = "ahead"  # dated too far ahead of the clock: features from the window, not added (it would block the key)
    DUPLICATE = "duplicate"  # an event with the same id is already in the window: no features, not added


# not frozen: a frozen dataclass sets each field through object.__setattr__ (5x the __init__ cost), and
# this is made for every event; treat it as immutable
@dataclass(slots=True)
class Windowed(Generic[E]):
    """An event, the features the window gives it, and how it met the window."""

    event: E
    features: Features | None
    status: WindowStatus
    recent: Recent | None = None  # the key's latest events (time, value, extra), this event last


class _SlidingLogic(StatefulBatchLogic[E, Windowed[E], WindowState]):
    def __init__(
        self,
        spec: WindowSpec,
        getters: tuple[Callable[[E], float], Callable[[E], float], Callable[[E], Hashable]],
        id_getter: Callable[[E], Hashable] | None,
        max_ahead: timedelta | None,
        idle_timeout: timedelta,
        resume_state: WindowState | None,
        now_getter: Clock,
        extra_getter: Callable[[E], Any] | None = None,
        recent: int = 0,
        probe: StageProbe[E] | None = None,
    ) -> None:
        self.agg = SlidingAggregates(spec, resume_state)
        self.ts_getter, self.value_getter, self.tag_getter = getters
        self.id_getter = id_getter
        self.extra_getter = extra_getter
        self.recent = recent
        self.max_ahead_s = max_ahead.total_seconds() if max_ahead is not None else None
        self.idle_timeout = idle_timeout
        self.now = now_getter
        self.expires_at = now_getter() + idle_timeout
        self.probe: StageProbe[E] = probe or StageProbe("window")
        # this worker thread's cells (a logic runs on one worker): events seen, calls made; None with metrics off.
        # Inlined in on_batch (no method calls): this runs once per key, about once per event.
        self._cells = self.probe.cells() if PROCESS.on else None
        self._traced = tracing.enabled()  # then every call is recorded: each traced event gets its window span

    def _odd(self, status: WindowStatus) -> None:
        if PROCESS.on:
            WINDOW_EVENTS.add((self.probe.stage, status.value))

    def on_batch(self, values: list[E]) -> tuple[list[Windowed[E]], bool]:
        started = 0
        cells = self._cells
        if cells is not None:
            cells[0][0] += len(values)
            cells[1][0] += 1
            if not cells[1][0] % TIMED_EVERY:
                started = self.probe.start()
        if self._traced and not started:
            started = self.probe.start()
        agg, ts, value, tag, ident = self.agg, self.ts_getter, self.value_getter, self.tag_getter, self.id_getter
        extra_of, n = self.extra_getter, self.recent
        now = self.now()
        horizon = now.timestamp() + self.max_ahead_s if self.max_ahead_s is not None else float("inf")
        out: list[Windowed[E]] = []
        for ev in values:
            t = ts(ev)
            event_id = ident(ev) if ident is not None else None
            extra = extra_of(ev) if extra_of is not None else None
            if event_id is not None and agg.seen(event_id):
                out.append(Windowed(ev, None, WindowStatus.DUPLICATE))
                self._odd(WindowStatus.DUPLICATE)
                continue
            feats = None if t > horizon else agg.add(t, value(ev), tag(ev), event_id, extra)
            if feats is not None:
                out.append(Windowed(ev, feats, WindowStatus.OK, agg.recent_columns(t, n) if n else None))
                continue
            status = WindowStatus.AHEAD if t > horizon else WindowStatus.LATE
            recent = agg.recent_columns(t, n - 1).with_event(t, value(ev), extra) if n else None  # as if there
            out.append(Windowed(ev, agg.peek(t, value(ev), tag(ev)), status, recent))
            self._odd(status)
        self.expires_at = now + self.idle_timeout
        if started:
            self.probe.done(values, started, count=False)
        return out, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[Windowed[E]], bool]:
        return [], StatefulBatchLogic.DISCARD

    def notify_at(self) -> datetime | None:
        return self.expires_at

    def snapshot(self) -> WindowState:
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
    id_getter: Callable[[E], Hashable] | None = None,
    max_ahead: timedelta | None = None,
    now_getter: Clock = utc_now,
    extra_getter: Callable[[E], Any] | None = None,
    recent: int = 0,
    origin: Origin[E] | None = None,
) -> KeyedStream[Windowed[E]]:
    """Attach sliding-window features to every event of every key.

    ``ts_getter`` gives the event time in seconds, ``value_getter`` the value
    summed, ``tag_getter`` the attribute counted distinct. Every event comes out
    once as a :class:`Windowed` with its status: added (``ok``); ``late`` (older than
    the key's newest event minus ``spec.allowed_lateness_s``) or ``ahead`` (dated more
    than ``max_ahead`` after the clock): both get features computed from the events
    the window holds but do not move it, so one event dated 2035 cannot make every
    later real event late; ``duplicate`` (``id_getter`` gave an id already in the
    window): not counted twice. With ``recent`` > 0, each event also comes with the
    key's last ``recent`` events ``(time, value, extra)`` (``extra_getter`` picks what is
    kept of each), itself last: the input of a sequence model.

    A key whose events stop for ``idle_timeout`` (system time) is dropped, which
    keeps state bounded; a key with no events left inside ``spec.horizon_s`` gives
    the same features as a dropped one, so expiry does not change results once the
    timeout is at least the horizon. Apart from ``ahead`` (which reads the clock),
    results depend only on the key's events in arrival order, so a replay
    reproduces them exactly. ``origin`` (the input record an event came from)
    adds event ages and spans to the metrics.

    ```python
    win = sliding_features("window", keyed, lambda e: e.t, lambda e: e.amount, lambda e: e.merchant)
    # KeyedStream[Windowed(event, (1m_count, 1m_sum, 1h_count, 1h_sum, distinct, secs_since_prev), status)]
    ```
    """
    getters = (ts_getter, value_getter, tag_getter)
    probe: StageProbe[E] = StageProbe(step_id, origin)

    def builder(resume_state: WindowState | None) -> _SlidingLogic[E]:
        return _SlidingLogic(
            spec, getters, id_getter, max_ahead, idle_timeout, resume_state, now_getter, extra_getter, recent, probe
        )

    return op.stateful_batch("aggregate", up, builder)
