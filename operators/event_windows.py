"""Per-key sliding event-time window features, computed for every event as it arrives.

Bytewax's window operators emit when a window closes; fraud scoring needs the
features *of this event* now. The per-key core is
:class:`state.windows.SlidingAggregates` (counts and sums over several windows,
distinct values, seconds since the previous event); this module runs one per
key as checkpointed state and routes events that are too late.

**Keys live in buckets.** Bytewax routes, groups and calls a stateful step once
per key and batch: one key per card cost ~1.7 µs per event before the window did
any work, and one logic, one notification and one snapshot per card. The keys
are spread over a fixed number of buckets (``crc32`` of the key), each bucket is
one Bytewax key holding its keys' windows, and a batch reaches a bucket as one
list. The count is fixed for a recovery store's life: a key's state is found in
the bucket its hash names, so a resume with another count is refused at start.
Bucket names do not depend on the worker count, so a store resumes on any number
of workers (Bytewax moves whole buckets).

**What buckets cost: checkpoints write whole buckets.** Bytewax keeps one
snapshot per key and rewrites the snapshot of every key it woke in an epoch. A
bucket pickles only its changed keys (the others' bytes are kept from before),
but the recovery store receives the whole bucket, and at any real rate every
bucket is woken in every epoch: with a recovery store, each epoch writes every
key's window (~300 bytes for a card with a few events in its hour), where a key
per card writes only the cards that had events. For 20,000 cards that is 6 MB an
epoch; for millions of cards, use ``buckets=0``: one key per card, Bytewax's own
per-key routing and snapshots. A bucket whose snapshot passes
``LARGE_BUCKET_BYTES`` while less than a tenth of it changed logs a warning
saying so, once per process.

**Later steps can run beside the bucket.** :func:`beside_buckets` places a
batching step's shard for a key on the worker that ran the key's bucket, so on
more than one process an event is not pickled and sent again between its window
and its model call.

Instrumented as stage ``step_id``: every event is counted, and those that did
not simply join their window by status (``sluice_window_events_total``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, ClassVar, Generic, TypeVar

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from operators.batching import Placement, by_hash, group_in_order, shard_lists, ungrouped
from operators.clock import Clock, utc_now
from operators.metrics import PROCESS, WINDOW_EVENTS
from operators.probes import Origin, StageProbe
from operators.shard_keys import worker_keys, worker_of
from state.tuple_pickle import tuple_pickled
from state.windows import Features, RecentEvents, SlidingAggregates, WindowSpec, recent_rows

E = TypeVar("E")
log = logging.getLogger(__name__)
LARGE_BUCKET_BYTES = 1 << 20  # a snapshot this large, mostly of unchanged keys, warns (64 of them: 64 MB an epoch)
STATE_LAYOUT = 1  # what a bucket's snapshot holds: (STATE_LAYOUT, bucket count, {key: pickled WindowState})
BucketState = tuple[int, int, dict[str, bytes]]

__all__ = [
    "Features", "RecentEvents", "SlidingAggregates", "WindowSpec", "WindowStatus", "Windowed", "recent_rows", "sliding_features"
]  # fmt: skip


class WindowStatus(StrEnum):
    """How an event met its key's window."""

    OK = "ok"  # added; features include it
    LATE = "late"  # older than the newest event minus the allowed lateness: features from the window, not added
    AHEAD = "ahead"  # dated too far ahead of the clock: features from the window, not added (it would block the key)
    DUPLICATE = "duplicate"  # an event with the same id is already in the window: no features, not added


# not frozen: a frozen dataclass sets each field through object.__setattr__ (5x the __init__ cost), and
# this is made for every event; treat it as immutable
@tuple_pickled  # crosses processes at keyed steps
@dataclass(slots=True)
class Windowed(Generic[E]):
    """An event, the features the window gives it, and how it met the window."""

    event: E
    features: Features | None
    status: WindowStatus
    recent: RecentEvents | None = None  # the key's latest events, flat (time, value, extra) triples, this event last


@dataclass(frozen=True, slots=True)
class _StepConfig(Generic[E]):
    """What every bucket's logic of one window step shares (built once per step)."""

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
    buckets: int
    buckets_setting: str  # named when a recovery store holds another count
    checkpointed: bool  # False: no recovery store takes the snapshots, so they are not made

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


Windower = Callable[[SlidingAggregates, E, float], "Windowed[E]"]  # (key's aggregates, event, horizon) -> result


def _windower(cfg: _StepConfig[E]) -> Windower[E]:
    """What one event gets from its key's window (``horizon``: the latest event time not dated too far ahead),
    with the step's getters bound once (this runs for every event)."""
    ts, value, tag, ident, extra_of, n = cfg.ts, cfg.value, cfg.tag, cfg.ident, cfg.extra, cfg.recent
    stage = cfg.probe.stage

    def window(agg: SlidingAggregates, ev: E, horizon: float) -> Windowed[E]:
        t = ts(ev)
        event_id = ident(ev) if ident is not None else None
        if event_id is not None and agg.seen(event_id):
            if PROCESS.on:
                WINDOW_EVENTS.add((stage, WindowStatus.DUPLICATE.value))
            return Windowed(ev, None, WindowStatus.DUPLICATE)
        extra = extra_of(ev) if extra_of is not None else None
        feats = None if t > horizon else agg.add(t, value(ev), tag(ev), event_id, extra)
        if feats is not None:
            return Windowed(ev, feats, WindowStatus.OK, agg.recent_events(t, n) if n else None)
        status = WindowStatus.AHEAD if t > horizon else WindowStatus.LATE
        recent = agg.recent_events_with(t, value(ev), extra, n) if n else None
        if PROCESS.on:
            WINDOW_EVENTS.add((stage, status.value))
        return Windowed(ev, agg.peek(t, value(ev), tag(ev)), status, recent)

    return window


def _key_of(item: tuple[str, Any]) -> str:
    return item[0]


def _resumed_keys(cfg: _StepConfig[Any], state: BucketState) -> dict[str, bytes]:
    """The pickled windows a snapshot holds, once it is known to be laid out as this step lays them out."""
    if state[:2] != (STATE_LAYOUT, cfg.buckets):
        raise ValueError(
            f"window step {cfg.probe.stage!r}: the recovery store holds its keys in {state[1]} buckets (layout "
            f"{state[0]}), this flow in {cfg.buckets} (layout {STATE_LAYOUT}): set {cfg.buckets_setting}="
            f"{state[1]} to resume it"
        )
    return dict(state[2])


class _BucketLogic(StatefulBatchLogic[list[tuple[str, E]], list[tuple[str, Windowed[E]]], BucketState]):
    """The windows of the keys of one bucket.

    A key's :class:`SlidingAggregates` is built from its pickled state at its first event after a resume, so
    a resume unpickles only the keys that come back. A snapshot pickles only the keys whose window changed
    since the previous one and hands Bytewax the bytes it kept for the rest (a second copy of each key's
    window, ~300 bytes for a card with a few events, kept in memory).

    Idle keys are dropped by one notification per bucket, armed lazily (Bytewax keeps a scheduled
    notification until it fires, and ``notify_at`` returning ``None`` leaves it in place): when it fires,
    it drops every key idle for the timeout and is armed again for the earliest of the others, but no
    sooner than an eighth of the timeout from now, so a bucket scans its keys at most about eight times per
    timeout however many of them expire. A key may so outlive its timeout by up to an eighth of it.
    """

    __slots__ = ("cfg", "window", "live", "pickled", "seen_at", "dirty", "armed", "size")
    warned: ClassVar[bool] = False  # whether a large bucket has been reported (once per process)

    def __init__(self, cfg: _StepConfig[E], window: Windower[E], resume_state: BucketState | None) -> None:
        self.cfg = cfg
        self.window = window
        self.live: dict[str, SlidingAggregates] = {}
        self.pickled: dict[str, bytes] = {} if resume_state is None else _resumed_keys(cfg, resume_state)
        self.dirty: set[str] = set()  # keys whose window changed since the last snapshot
        self.armed = False  # whether Bytewax holds a notification for this bucket
        self.size = sum(map(len, self.pickled.values()))  # bytes of the snapshot's values
        self.seen_at = dict.fromkeys(self.pickled, cfg.now_s())  # when each key last had an event (or resumed)

    def _load(self, key: str) -> SlidingAggregates:
        agg = self.live[key] = SlidingAggregates.unpickled(self.cfg.spec, self.pickled.get(key))
        return agg

    def on_batch(self, values: list[list[tuple[str, E]]]) -> tuple[list[list[tuple[str, Windowed[E]]]], bool]:
        cfg = self.cfg
        started = cfg.probe.start()
        live, seen_at, dirty, window = self.live, self.seen_at, self.dirty, self.window
        now = cfg.now_s()
        horizon = now + cfg.max_ahead_s
        out: list[tuple[str, Windowed[E]]] = []
        for group in values:
            for key, ev in group:
                agg = live.get(key)
                if agg is None:
                    agg = self._load(key)
                seen_at[key] = now
                w = window(agg, ev, horizon)
                if w.status is WindowStatus.OK:  # the others leave the window as it was
                    dirty.add(key)
                out.append((key, w))
        if started:
            cfg.probe.done([w.event for _, w in out], started)
        return [out], StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[list[tuple[str, Windowed[E]]]], bool]:
        self.armed = False  # it fired: Bytewax no longer holds it
        cutoff = self.cfg.now_s() - self.cfg.idle_s
        for key in [k for k, seen in self.seen_at.items() if seen <= cutoff]:
            del self.seen_at[key]
            self.live.pop(key, None)
            self.size -= len(self.pickled.pop(key, b""))
            self.dirty.discard(key)
        return [], StatefulBatchLogic.RETAIN if self.seen_at else StatefulBatchLogic.DISCARD

    def notify_at(self) -> datetime | None:
        if self.armed or not self.seen_at:
            return None  # the notification given before still stands (or there is nothing to expire)
        self.armed = True
        soonest = self.cfg.now_s() - self.cfg.idle_s * 7 / 8  # fire no sooner than idle/8 from now
        return self.cfg.due(max(min(self.seen_at.values()), soonest))

    def snapshot(self) -> BucketState:
        if not self.cfg.checkpointed:
            self.dirty.clear()
            return STATE_LAYOUT, self.cfg.buckets, {}
        pickled, live = self.pickled, self.live
        size, changed = self.size, 0
        for key in self.dirty:
            frozen = live[key].pickled()
            changed += len(frozen)
            size += len(frozen) - len(pickled.get(key, b""))
            pickled[key] = frozen
        self.dirty.clear()
        self.size = size
        if size > LARGE_BUCKET_BYTES and size > 10 * changed and not _BucketLogic.warned:
            _BucketLogic.warned = True
            log.warning(
                "window step %r: a bucket's snapshot holds %.1f MB (%d keys) of which %.0f kB changed. If this flow "
                "runs with a recovery store, each checkpoint writes every bucket woken in its epoch whole: with this "
                "many keys, set %s=0 (one key each: a checkpoint writes only the keys that changed) on a new store",
                self.cfg.probe.stage, size / 1e6, len(pickled), changed / 1e3, self.cfg.buckets_setting,
            )  # fmt: skip
        return STATE_LAYOUT, self.cfg.buckets, dict(pickled)  # a copy: later snapshots change this dict


class _KeyLogic(StatefulBatchLogic[list[tuple[str, E]], list[tuple[str, Windowed[E]]], BucketState]):
    """One key's window (``buckets=0``, for millions of keys): a bucket's work for a single key, without
    its dicts and without a second copy of the window (~1 kB a key less). Snapshots have the buckets'
    layout, so a store is refused by the same check when the count changes. Its idle expiry is the
    per-key form of the bucket's: one notification per idle period, re-armed if the key had events."""

    __slots__ = ("cfg", "window", "key", "agg", "frozen", "seen_at", "armed")

    def __init__(self, cfg: _StepConfig[E], window: Windower[E], resume_state: BucketState | None) -> None:
        self.cfg = cfg
        self.window = window
        self.key = ""
        self.agg: SlidingAggregates | None = None
        self.frozen: bytes | None = None  # the resumed window, until the key's first event unpickles it
        if resume_state is not None:
            ((self.key, self.frozen),) = _resumed_keys(cfg, resume_state).items()
        self.seen_at = cfg.now_s()
        self.armed = False

    def on_batch(self, values: list[list[tuple[str, E]]]) -> tuple[list[list[tuple[str, Windowed[E]]]], bool]:
        cfg = self.cfg
        started = cfg.probe.start()
        agg = self.agg
        if agg is None:
            agg = self.agg = SlidingAggregates.unpickled(cfg.spec, self.frozen)
            self.frozen = None
        self.seen_at = now = cfg.now_s()
        horizon, window = now + cfg.max_ahead_s, self.window
        out = [(key, window(agg, ev, horizon)) for group in values for key, ev in group]
        if out:
            self.key = out[0][0]
        if started:
            cfg.probe.done([w.event for _, w in out], started)
        return [out], StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[list[tuple[str, Windowed[E]]]], bool]:
        self.armed = False  # it fired: Bytewax no longer holds it
        idle = self.cfg.now_s() - self.seen_at >= self.cfg.idle_s
        return [], StatefulBatchLogic.DISCARD if idle else StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self.armed:
            return None  # the notification given before still stands
        self.armed = True
        return self.cfg.due(self.seen_at)

    def snapshot(self) -> BucketState:
        if not self.cfg.checkpointed:
            return STATE_LAYOUT, 0, {}
        frozen = self.agg.pickled() if self.agg is not None else self.frozen
        return STATE_LAYOUT, 0, {} if frozen is None else {self.key: frozen}


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
    buckets: int = 64,
    buckets_setting: str = "buckets",
    checkpointed: bool = True,
) -> KeyedStream[Windowed[E]]:
    """Attach sliding-window features to every event of every key.

    ``ts_getter`` gives the event time in seconds (a NaN time is late), ``value_getter``
    the value summed (a ``float`` or an ``int``), ``tag_getter`` the attribute counted
    distinct. Every event comes out
    once as a :class:`Windowed` with its status: added (``ok``); ``late`` (older than
    the key's newest event minus ``spec.allowed_lateness_s``) or ``ahead`` (dated more
    than ``max_ahead`` after the clock): both get features computed from the events
    the window holds but do not move it, so one event dated 2035 cannot make every
    later real event late; ``duplicate`` (``id_getter`` gave an id already in the
    window): not counted twice. With ``recent`` > 0, each event also comes with the
    key's last ``recent`` events as one flat list of ``time, value, extra`` triples
    (:data:`~state.windows.RecentEvents`; :func:`~state.windows.recent_rows` makes them
    rows; ``extra_getter`` picks what is kept of each), itself last: the input of a
    sequence model.

    A key whose events stop for ``idle_timeout`` (system time) is dropped, which
    keeps state bounded. A key keeps its events for ``spec.horizon_s`` plus
    ``spec.allowed_lateness_s`` (its recent events, duplicate ids and lateness come
    from them), so with a timeout at least that long a dropped key gives every
    result a kept one would, and when the drop happens cannot change a result.
    Apart from ``ahead`` (which reads the clock), results then depend only on the
    key's events in arrival order, so a replay reproduces them exactly. ``origin``
    (the input record an event came from) adds event ages and spans to the metrics.

    The keys' windows are kept in ``buckets`` checkpointed buckets (see the module
    docstring; 0: one per key, for millions of keys with a recovery store). More
    buckets spread the keys over more workers more evenly; fewer make fewer,
    larger calls. A recovery store resumes only with the count it was written
    with; the error says so and names ``buckets_setting`` (where the flow's user
    sets the count). ``checkpointed=False`` (no recovery store will take the
    snapshots: :func:`dataflows.command_line.writes_checkpoints`) makes every snapshot
    empty instead of pickling the cards that changed, ~2-3% of the fraud flow's
    CPU for snapshots Bytewax would drop unread.

    ```python
    win = sliding_features("window", keyed, lambda e: e.t, lambda e: e.amount, lambda e: e.merchant)
    # KeyedStream[Windowed(event, (1m_count, 1m_sum, 1h_count, 1h_sum, distinct, secs_since_prev), status)]
    ```
    """
    if buckets < 0:
        raise ValueError(f"window step {step_id!r}: {buckets_setting} must be 0 (one per key) or more, got {buckets}")
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
        buckets,
        buckets_setting,
        checkpointed,
    )
    window = _windower(cfg)
    names = bucket_names(buckets)

    def by_bucket(items: list[tuple[str, E]]) -> list[tuple[str, list[tuple[str, E]]]]:
        return shard_lists(items, _key_of, names) if names else group_in_order(items, _key_of)  # 0: a key each

    def builder(resume_state: BucketState | None) -> StatefulBatchLogic[Any, Any, BucketState]:
        logic = _BucketLogic if names else _KeyLogic
        return logic(cfg, window, resume_state)

    # step ids unlike the per-key version's ("aggregate"): a store it wrote resumes with fresh windows
    windows = op.stateful_batch("buckets", op.flat_map_batch("bucket", up, by_bucket), builder)
    return op.flat_map_batch("unbucket", windows, ungrouped)


def bucket_names(buckets: int) -> list[str]:
    """The window's bucket keys (Bytewax keys of the ``buckets`` step); a key's is :func:`by_hash` of them."""
    return [str(i) for i in range(buckets)]


def beside_buckets(buckets: int) -> Placement:
    """A batching step's :data:`~operators.batching.Placement` that runs a key's shard on the worker that runs
    the key's window bucket, so the event stays on that worker between the two steps.

    Only for shards placed one per worker (:func:`operators.shard_keys.worker_keys`, the batching steps'
    default): the step's names then say the worker count, and :func:`operators.shard_keys.worker_of` where
    each bucket runs. Other names, or ``buckets=0`` (a key per card, placed by SipHash per key), keep the
    hash placement. Which shard batches an event changes neither its features nor its model's inputs; shards
    differ only in when, around a promotion, each switches to the new version.

    >>> from operators.batching import pick_shard
    >>> names = worker_keys(3)
    >>> choose = beside_buckets(64)(names)
    >>> all(worker_of(choose(c), 3) == worker_of(pick_shard(c, bucket_names(64)), 3) for c in ("a", "b", "card-7"))
    True
    >>> beside_buckets(64)(["0", "1"])("card-7") == by_hash(["0", "1"])("card-7")  # a count set by hand
    True
    """
    if buckets == 0:
        return by_hash
    bucket_keys = bucket_names(buckets)

    def placement(names: Sequence[str]) -> Callable[[str], str]:
        workers = len(names)
        if tuple(names) != worker_keys(workers):
            return by_hash(names)
        shard_of_bucket = {b: names[worker_of(b, workers)] for b in bucket_keys}
        bucket_of = by_hash(bucket_keys)  # the bucket the window puts the key in
        return lambda key: shard_of_bucket[bucket_of(key)]

    return placement
