"""Time-decayed counts of the most frequent items of one key: the pure core of streaming popularity.

An occurrence of weight ``w`` at event time ``t`` counts ``w * 2 ** (-(now - t) / half_life)``
at time ``now``: with a half-life of a quarter of an hour an interaction an hour
old still counts 1/16, so the ranking is "the last hour", recent hours weighing
most. Why decay rather than an exact one-hour window of minute buckets: the
state is checkpointed every epoch, and exact buckets for 5,000 interactions/s
hold hundreds of thousands of (minute, item) entries per category; decayed
counts hold one number per item, and at most ``capacity`` items.

Adding is O(1): counts are stored scaled up by ``2 ** ((t - origin) / half_life)``
(the same factor for every item, so the order is unchanged) and rescaled when
that factor grows large. When more than twice ``capacity`` items are held, the
weakest are dropped (a "space-saving" bound: the top of the ranking is what
matters, and a dropped item that comes back starts from zero).
"""

from __future__ import annotations

import heapq
from typing import Any

RESCALE_AFTER = 60.0  # half-lives between rescales (2**60 is still far from float overflow)


class DecayedCounts:
    """Decayed item counts of one key.

    >>> c = DecayedCounts(half_life_s=60.0, capacity=10)
    >>> for item, t in [("a", 0.0), ("b", 0.0), ("b", 0.0), ("a", 120.0)]:
    ...     c.add(item, 1.0, t)
    >>> [(item, round(score, 3)) for item, score in c.top(2)]  # at t=120 the two early "b"s count 0.25 each
    [('a', 1.25), ('b', 0.5)]
    """

    __slots__ = ("half_life_s", "capacity", "origin_s", "newest_s", "counts")

    def __init__(self, half_life_s: float, capacity: int = 1000, state: dict[str, Any] | None = None) -> None:
        self.half_life_s = half_life_s
        self.capacity = capacity
        self.origin_s: float | None = state["origin_s"] if state else None
        self.newest_s: float = state["newest_s"] if state else float("-inf")
        self.counts: dict[str, float] = dict(state["counts"]) if state else {}

    def add(self, item: str, weight: float, t_s: float) -> None:
        """Count ``weight`` for ``item`` at event time ``t_s`` (any order)."""
        if self.origin_s is None:
            self.origin_s = t_s
        exponent = (t_s - self.origin_s) / self.half_life_s
        if exponent > RESCALE_AFTER:
            self._rescale(t_s)
            exponent = 0.0
        self.counts[item] = self.counts.get(item, 0.0) + weight * 2.0**exponent
        self.newest_s = max(self.newest_s, t_s)
        if len(self.counts) > 2 * self.capacity:
            self.counts = dict(heapq.nlargest(self.capacity, self.counts.items(), key=lambda kv: kv[1]))

    def _rescale(self, new_origin_s: float) -> None:
        assert self.origin_s is not None
        factor = 2.0 ** (-(new_origin_s - self.origin_s) / self.half_life_s)
        self.counts = {i: c * factor for i, c in self.counts.items() if c * factor > 1e-12}
        self.origin_s = new_origin_s

    def top(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` items with the largest decayed counts at the newest event time, largest first
        (ties by item id)."""
        if self.origin_s is None:
            return []
        scale = 2.0 ** (-(self.newest_s - self.origin_s) / self.half_life_s)
        best = heapq.nsmallest(n, self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return [(item, count * scale) for item, count in best]

    def state(self) -> dict[str, Any]:
        """A copy (what the flow checkpoints)."""
        return {"origin_s": self.origin_s, "newest_s": self.newest_s, "counts": dict(self.counts)}
