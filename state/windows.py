"""Sliding event-time aggregates of one key: the pure core of the window features.

:class:`SlidingAggregates` keeps a key's recent events sorted by event time and
answers, for each new event at time ``t``, the count and sum over ``(t - w, t]``
for each window ``w``, the distinct values of an attribute over the longest
window, and the seconds since the previous event.

Results depend only on the key's events in arrival order, never on wall-clock
time or on how other keys interleave, so a replay reproduces them exactly. The
flow (:func:`operators.event_windows.sliding_features`) and training
(:mod:`models.train_fraud`) use this same class, so the model is trained on the
features it is served.
"""

from __future__ import annotations

import functools
import pickle
from bisect import bisect_right
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

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

    @functools.cached_property  # read by every event's features
    def spans(self) -> tuple[tuple[float, bool, bool], ...]:
        """``(length, a window's count and sum, the distinct span)`` for each span whose start the features
        search: the windows, then the distinct span when it is not one of them (found once, not twice)."""
        out = [(w, True, w == self.distinct_window_s) for _, w in self.windows]
        if not any(distinct for _, _, distinct in out):
            out.append((self.distinct_window_s, False, True))
        return tuple(out)

    @functools.cached_property  # read by every new key's aggregates
    def horizon_s(self) -> float:
        return max([w for _, w in self.windows] + [self.distinct_window_s, self.gap_cap_s])


RecentEvents = list[Any]
"""A key's latest events, oldest first, as one flat list ``[time, value, extra, time, value, extra, ...]``
(a copy: later events do not change it). One slice of the key's state per event, where three columns and an
object to hold them cost three more allocations for every event, and a caller reads the rows of only a few
(the fraud flow escalates about one event in thirty): :func:`recent_rows` gives them."""


def _flat(times: list[float], values: list[float], extras: list[Any]) -> RecentEvents:
    return [x for row in zip(times, values, extras, strict=True) for x in row]


class Recent(list[Any]):
    """Only to load what a recovery store written before 2026-12-02 holds for an event waiting in a
    micro-batch: its recent events as the class of three columns this name was. Since 2026-12-02 (morning)
    those pickles call ``Recent(times, values, extras)``; before, they built the object empty and set its
    three fields. Either way the result is the :data:`RecentEvents` list (it pickles as a plain list).

    >>> Recent([1.0, 2.0], [5.0, 6.0], ["x", "y"])
    [1.0, 5.0, 'x', 2.0, 6.0, 'y']
    """

    def __new__(cls, *columns: list[Any]) -> Any:
        return _flat(*columns) if columns else super().__new__(cls)

    def __setstate__(self, state: tuple[None, dict[str, list[Any]]]) -> None:
        fields = state[1]
        self[:] = _flat(fields["times"], fields["values"], fields["extras"])

    def __reduce__(self) -> tuple[type[list[Any]], tuple[list[Any]]]:
        return list, (list(self),)


def recent_rows(recent: RecentEvents) -> list[tuple[float, float, Any]]:
    """``(time, value, extra)`` per event of a :data:`RecentEvents`.

    >>> recent_rows([1.0, 5.0, "x", 2.0, 6.0, "y"])
    [(1.0, 5.0, 'x'), (2.0, 6.0, 'y')]
    """
    triples = iter(recent)
    return list(zip(triples, triples, triples, strict=True))


WindowState = tuple[list[float], list[float], list[Hashable], list[Hashable], list[Any], float]


class SlidingAggregates:
    """One key's recent events and the features they give a new event.

    >>> agg = SlidingAggregates(WindowSpec())
    >>> agg.add(0.0, 10.0, "m1")
    (1.0, 10.0, 1.0, 10.0, 1.0, 3600.0)
    >>> agg.add(30.0, 5.0, "m2")
    (2.0, 15.0, 2.0, 15.0, 2.0, 30.0)
    >>> agg.add(100.0, 1.0, "m1")  # the earlier events have left the 1-minute window
    (1.0, 1.0, 3.0, 16.0, 2.0, 70.0)
    >>> agg.peek(110.0, 2.0, "m3"), agg.newest  # what an event would get, without keeping it
    ((2.0, 3.0, 4.0, 18.0, 3.0, 10.0), 100.0)

    Events may carry an id (``add(..., event_id=...)``); :meth:`seen` answers whether an
    event with that id is still in the window, so a re-sent event is recognised. They
    may also carry an ``extra`` (any small value kept with the event), which
    :meth:`recent` returns with the key's latest events, e.g. for a sequence model.

    The events are held as columns (``times``, ``values``, ``tags``, ``ids``: what the features and
    duplicate ids read) and once more as one flat list of ``(time, value, extra)`` triples, of which
    :meth:`recent_events` hands each event a single slice.
    """

    __slots__ = ("spec", "times", "values", "tags", "ids", "triples", "newest", "keep_s", "_id_set")

    def __init__(self, spec: WindowSpec, state: WindowState | None = None):
        self.spec = spec
        self.keep_s = spec.horizon_s + spec.allowed_lateness_s
        if state is None:
            self.times: list[float] = []
            self.values: list[float] = []
            self.tags: list[Hashable] = []
            self.ids: list[Hashable] = []
            self.triples: RecentEvents = []
            self.newest = float("-inf")
        else:
            times, values, tags, ids, extras, self.newest = state
            self.times, self.values, self.tags, self.ids = list(times), list(values), list(tags), list(ids)
            self.triples = _flat(times, values, extras)
        self._id_set = {i for i in self.ids if i is not None}

    def seen(self, event_id: Hashable) -> bool:
        """Whether an event with this id is held (within the window's horizon)."""
        return event_id in self._id_set

    def add(
        self, t: float, value: float, tag: Hashable, event_id: Hashable = None, extra: Any = None
    ) -> Features | None:
        """Add an event at ``t`` seconds; return its features, or None if it is late. A NaN time is late: it
        is never held (a NaN among the sorted times would break every search of them)."""
        if not t >= self.newest - self.spec.allowed_lateness_s:
            return None
        i = self._insert(t, value, tag, event_id, extra)
        if t > self.newest:
            self.newest = t
        feats = self._features(t, i)
        times = self.times
        if times[0] <= self.newest - self.keep_s or len(times) > self.spec.max_events_per_key:
            self._evict()  # something to drop (the usual event drops nothing: no call, no search)
        return feats

    def peek(self, t: float, value: float, tag: Hashable) -> Features:
        """The features an event at ``t`` gets from the events held, without keeping it
        (for events that must not move the window: late, or dated too far ahead)."""
        times, values, tags = self.times, self.values, self.tags  # all the features read
        i = bisect_right(times, t)
        times.insert(i, t)
        values.insert(i, value)
        tags.insert(i, tag)
        try:
            return self._features(t, i)
        finally:
            del times[i], values[i], tags[i]

    def recent(self, t: float, n: int) -> list[tuple[float, float, Any]]:
        """The key's last ``n`` events at or before ``t`` as ``(time, value, extra)``, oldest first.

        >>> agg = SlidingAggregates(WindowSpec())
        >>> for t in (0.0, 10.0, 20.0): _ = agg.add(t, t + 1, "m", extra=f"x{t:g}")
        >>> agg.recent(20.0, 2)
        [(10.0, 11.0, 'x10'), (20.0, 21.0, 'x20')]
        """
        return recent_rows(self.recent_events(t, n))

    def recent_events(self, t: float, n: int) -> RecentEvents:
        """:meth:`recent` as a :data:`RecentEvents`: one slice, for a caller that needs the rows of only a few
        events.

        >>> agg = SlidingAggregates(WindowSpec())
        >>> for t in (0.0, 10.0, 20.0): _ = agg.add(t, t + 1, "m", extra=f"x{t:g}")
        >>> agg.recent_events(20.0, 2)
        [10.0, 11.0, 'x10', 20.0, 21.0, 'x20']
        """
        times = self.times
        hi = len(times) if times and t >= times[-1] else bisect_right(times, t)  # the usual case: t is the newest
        lo = hi - n if hi > n else 0
        return self.triples[3 * lo : 3 * hi]

    def recent_events_with(self, t: float, value: float, extra: Any, n: int) -> RecentEvents:
        """:meth:`recent_events` as if an event at ``t`` were held, that event last (for an event that does
        not enter the window: late, or dated too far ahead).

        >>> agg = SlidingAggregates(WindowSpec())
        >>> for t in (0.0, 10.0, 20.0): _ = agg.add(t, t + 1, "m", extra=f"x{t:g}")
        >>> agg.recent_events_with(5.0, 9.0, "late", 2)
        [0.0, 1.0, 'x0', 5.0, 9.0, 'late']
        """
        return [*self.recent_events(t, n - 1), t, value, extra]

    def _insert(self, t: float, value: float, tag: Hashable, event_id: Hashable, extra: Any) -> int:
        times = self.times
        if not times or t >= times[-1]:
            i = len(times)
            times.append(t)
            self.values.append(value)
            self.tags.append(tag)
            self.ids.append(event_id)
            self.triples += (t, value, extra)
        else:
            i = bisect_right(times, t)
            times.insert(i, t)
            self.values.insert(i, value)
            self.tags.insert(i, tag)
            self.ids.insert(i, event_id)
            self.triples[3 * i : 3 * i] = (t, value, extra)
        if event_id is not None:
            self._id_set.add(event_id)
        return i

    def _features(self, t: float, i: int) -> Features:
        """The features of the event at index ``i`` (time ``t``): what the events at or before it give.

        Written for a key holding a few events, the usual case (~5 for a card): a span reaching past the
        key's oldest event starts at 0 without a search, a window holding only this event is read without a
        slice, and each number is made without a builtin call where an operator does. Every result is the one
        the plain definition gives, bit for bit, for ``float`` or ``int`` values (sums run in the same order;
        ``0.0 + v`` is ``float(sum([v]))``, ``-0.0`` included); a hypothesis test holds it to a brute-force
        oracle.
        """
        spec, times, values = self.spec, self.times, self.values
        hi = i + 1  # events at or before t (ties after i arrived later and are excluded)
        oldest = times[0]
        out: list[float] = []
        first = 0  # where the distinct span starts
        for w, window, distinct in spec.spans:
            start = t - w
            lo = 0 if oldest > start else bisect_right(times, start, 0, hi)
            if window:
                out.append(hi - lo + 0.0)
                out.append(0.0 + values[i] if lo == i else float(sum(values[lo:hi])))
            if distinct:
                first = lo
        out.append(1.0 if first == i else float(len(set(self.tags[first:hi]))))
        cap = spec.gap_cap_s
        gap = t - times[i - 1] if i > 0 else cap
        out.append(cap if cap < gap else gap)  # min(gap, cap), as min() picks
        return tuple(out)

    def _evict(self) -> None:
        drop = bisect_right(self.times, self.newest - self.keep_s)
        drop = max(drop, len(self.times) - self.spec.max_events_per_key)
        if drop > 0:
            for event_id in self.ids[:drop]:
                self._id_set.discard(event_id)
            del self.times[:drop], self.values[:drop], self.tags[:drop], self.ids[:drop], self.triples[: 3 * drop]

    def pickled(self) -> bytes:
        """The key's state, pickled: what :meth:`unpickled` resumes from.

        >>> agg = SlidingAggregates(WindowSpec())
        >>> _ = agg.add(5.0, 1.0, "m", event_id="e1")
        >>> SlidingAggregates.unpickled(WindowSpec(), agg.pickled()).seen("e1")
        True
        """
        parts = (self.times, self.values, self.tags, self.ids, self.triples[2::3], self.newest)  # extras: the layout
        return pickle.dumps(parts, protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def unpickled(cls, spec: WindowSpec, frozen: bytes | None) -> SlidingAggregates:
        """A key's aggregates from :meth:`pickled`'s bytes (``None``: a key with no events yet)."""
        return cls(spec, None if frozen is None else pickle.loads(frozen))
