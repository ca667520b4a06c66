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

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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


@dataclass(frozen=True, slots=True)
class _StepConfig(Generic[E]):
    """What every key's logic of one window step shares (built once per step: a new card builds only its
    logic and its aggregates, on about one event in ten of a drain)."""

    spec: WindowSpec
    ts: Callable[[E], float]
    value: Callable[[E], float]
    tag: Callable[[E], Hashable]
    ident: Callable[[E], Hashable] | None
    extra: Callable[[E], Any] | None
    recent: int
    max_ahead_s: float  # inf when events may be dated any time ahead
    idle_s: float
    now_s: Callable[[], float]  # the clock in epoch seconds
    probe: StageProbe[E]

    def due(self, seen_at: float) -> datetime:
        """When a key last seen at ``seen_at`` (this step's clock) becomes idle, on the system clock: Bytewax
        fires notifications by the system clock, so a test clock's time is turned into a delay from now (a
        test clock standing still in the past would otherwise make every notification due at once, forever).
        """
        if self.now_s is time.time:
            return datetime.fromtimestamp(seen_at + self.idle_s, UTC)
        return utc_now() + timedelta(seconds=max(0.0, seen_at + self.idle_s - self.now_s()))


def _seconds_of(clock: Clock) -> Callable[[], float]:
    """``clock`` in epoch seconds: ``time.time`` for the system clock (no datetime made per call)."""
    return time.time if clock is utc_now else lambda: clock().timestamp()


class _SlidingLogic(StatefulBatchLogic[E, Windowed[E], WindowState]):
    """One key's window. Its idle expiry is armed lazily: Bytewax keeps a key's scheduled notification until
    it fires, and ``notify_at`` returning ``None`` leaves it in place, so the logic schedules one notification
    per idle period (at the last event's time plus the timeout, as known then) instead of handing Bytewax a
    new datetime after every event. When it fires, a key that has had events since is re-armed, not dropped."""

    __slots__ = ("cfg", "agg", "seen_at", "armed", "_cells", "_traced")

    def __init__(self, cfg: _StepConfig[E], resume_state: WindowState | None) -> None:
        self.cfg = cfg
        self.agg = SlidingAggregates(cfg.spec, resume_state)
        self.seen_at = cfg.now_s()  # when the key last had an event (or was built)
        self.armed = False  # whether Bytewax holds a notification for this key
        # this worker thread's cells (a logic runs on one worker): events seen, calls made; None with metrics off.
        # Inlined in on_batch (no method calls): this runs once per key, about once per event.
        self._cells = cfg.probe.cells() if PROCESS.on else None
        self._traced = tracing.enabled()  # then every call is recorded: each traced event gets its span

    def _odd(self, status: WindowStatus) -> None:
        if PROCESS.on:
            WINDOW_EVENTS.add((self.cfg.probe.stage, status.value))

    def on_batch(self, values: list[E]) -> tuple[list[Windowed[E]], bool]:
        cfg = self.cfg
        started = 0
        cells = self._cells
        if cells is not None:
            cells[0][0] += len(values)
            cells[1][0] += 1
            if not cells[1][0] % TIMED_EVERY:
                started = cfg.probe.start()
        if self._traced and not started:
            started = cfg.probe.start()
        agg, ts, value, tag, ident, extra_of, n = self.agg, cfg.ts, cfg.value, cfg.tag, cfg.ident, cfg.extra, cfg.recent
        self.seen_at = now = cfg.now_s()
        horizon = now + cfg.max_ahead_s
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
        if started:
            cfg.probe.done(values, started, count=False)
        return out, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[Windowed[E]], bool]:
        self.armed = False  # it fired: Bytewax no longer holds it
        idle = self.cfg.now_s() - self.seen_at >= self.cfg.idle_s
        return [], StatefulBatchLogic.DISCARD if idle else StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self.armed:
            return None  # the notification given before still stands
        self.armed = True
        return self.cfg.due(self.seen_at)

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
    cfg = _StepConfig(
        spec,
        ts_getter,
        value_getter,
        tag_getter,
        id_getter,
        extra_getter,
        recent,
        max_ahead.total_seconds() if max_ahead is not None else float("inf"),
        idle_timeout.total_seconds(),
        _seconds_of(now_getter),
        StageProbe(step_id, origin),
    )

    def builder(resume_state: WindowState | None) -> _SlidingLogic[E]:
        return _SlidingLogic(cfg, resume_state)

    return op.stateful_batch("aggregate", up, builder)
