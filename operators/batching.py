"""The batching buffer shared by the synchronous and asynchronous micro-batchers.

A batch is *full* at ``max_batch`` items and *due* ``max_wait`` after its
oldest item arrived. The deadline starts at the FIRST buffered item, which is
what a latency bound needs (Bytewax's ``collect`` restarts its timeout on every
item, so a steady trickle never flushes on time). Items are kept in arrival
order with one deadline per arrival run (not per item), so adding a runtime
batch of a thousand items costs one list extend.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Generic, TypeVar

X = TypeVar("X")
Y = TypeVar("Y")

Shards = int | Sequence[str]  # a count (keys "0", "1", ...) or the keys (operators.shard_keys.worker_keys)
# Given a step's shard names (once, when the flow is built), the function from an item's key to its shard.
Placement = Callable[[Sequence[str]], Callable[[str], str]]


def shard_names(shards: Shards) -> Sequence[str]:
    """The shard keys ``shards`` stands for.

    >>> shard_names(3), shard_names(("4", "0"))
    (['0', '1', '2'], ('4', '0'))
    """
    return [str(i) for i in range(shards)] if isinstance(shards, int) else shards


def group_in_order(items: list[X], key: Callable[[X], str]) -> list[tuple[str, list[X]]]:
    """``items`` grouped by ``key``, the groups in the order their keys first appear and each group's items in
    their order: one ``(key, items)`` pair per key and batch for Bytewax to route (it routes, groups and wraps
    every item of a keyed step on its own, ~0.6 us each).

    >>> group_in_order(["a1", "b1", "a2"], lambda x: x[0])
    [('a', ['a1', 'a2']), ('b', ['b1'])]
    """
    groups: dict[str, list[X]] = {}
    for x in items:
        k = key(x)
        group = groups.get(k)
        if group is None:
            groups[k] = [x]
        else:
            group.append(x)
    return list(groups.items())


def ungrouped(groups: list[tuple[str, list[X]]]) -> list[X]:
    """The items of ``(key, items)`` pairs, in order: what :func:`group_in_order` took apart, put back.

    >>> ungrouped(group_in_order(["a1", "b1", "a2"], lambda x: x[0]))
    ['a1', 'a2', 'b1']
    """
    return [x for _, xs in groups for x in xs]


def flat(lists: list[list[X]]) -> list[X]:
    """One list of the items of ``lists``, in order (no copy when there is one: the common case of a step that
    receives one list per upstream batch).

    >>> flat([[1, 2]]), flat([[1], [2, 3]])
    ([1, 2], [1, 2, 3])
    """
    return lists[0] if len(lists) == 1 else [x for xs in lists for x in xs]


def by_hash(names: Sequence[str]) -> Callable[[str], str]:
    """The default :data:`Placement`: a key's shard of ``names`` is ``crc32`` of the key, stable across
    processes (unlike ``hash``). Build it once and call it per item: one call, no per-item set-up (a
    ``functools.partial`` of :func:`pick_shard` cost 0.11 µs more per item).

    >>> choose = by_hash(["0", "1", "2"])
    >>> choose("card-1") == choose("card-1") == pick_shard("card-1", ["0", "1", "2"])
    True
    """
    count = len(names)
    return lambda key: names[zlib.crc32(key.encode()) % count]


def pick_shard(key: str, names: Sequence[str]) -> str:
    """The shard of ``names`` that ``key`` belongs to, as :func:`by_hash` places it (for a single key)."""
    return by_hash(names)(key)


def shard_lists(
    items: list[X], shard_key: Callable[[X], str], names: Sequence[str], choose: Callable[[str], str] | None = None
) -> list[tuple[str, list[X]]]:
    """``items`` grouped by shard (``choose`` of their key, by default :func:`by_hash`), each shard's in
    their order (one shard: no key is computed).

    >>> shard_lists(["a", "b", "a"], lambda x: x, ["0"])
    [('0', ['a', 'b', 'a'])]
    >>> names = [str(i) for i in range(64)]
    >>> sorted(shard_lists(["a", "b", "a"], lambda x: x, names)) == sorted(
    ...     [(pick_shard("a", names), ["a", "a"]), (pick_shard("b", names), ["b"])])
    True
    """
    if len(names) == 1:
        return [(names[0], items)] if items else []
    pick = by_hash(names) if choose is None else choose
    return group_in_order(items, lambda x: pick(shard_key(x)))


def check_batching(max_batch: int, shards: Shards = 1) -> None:
    """The bounds every batching operator checks when its dataflow is built (a worker builds its buffer
    only later, when the flow runs).

    >>> check_batching(0)
    Traceback (most recent call last):
    ...
    ValueError: max_batch must be >= 1
    """
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    names = shard_names(shards)
    if not names:
        raise ValueError("shards must be >= 1")
    if len(set(names)) < len(names):
        raise ValueError(f"shard keys must differ, not {list(names)}")


class BatchBuffer(Generic[X]):
    """Items waiting for a batch call.

    >>> from datetime import datetime, timedelta, UTC
    >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
    >>> buf = BatchBuffer(max_batch=3, max_wait=timedelta(seconds=1))
    >>> buf.add([1, 2], t0); buf.add([3, 4], t0 + timedelta(seconds=0.5))
    >>> buf.full(), buf.take()
    (True, [1, 2, 3])
    >>> buf.due(t0 + timedelta(seconds=1.2)), buf.due(t0 + timedelta(seconds=1.5))
    (False, True)
    >>> buf.snapshot()
    [4]
    """

    __slots__ = ("max_batch", "max_wait", "_items", "_runs")

    def __init__(
        self, max_batch: int, max_wait: timedelta, restored: list[X] | None = None, now: datetime | None = None
    ):
        check_batching(max_batch)
        self.max_batch = max_batch
        self.max_wait = max_wait
        self._items: list[X] = list(restored or [])
        self._runs: deque[list] = deque()  # [items left in the run, its deadline], oldest first
        if self._items:
            if now is None:
                raise ValueError("restoring items needs the current time")
            self._runs.append([len(self._items), now])  # restored items are overdue: flush at the first chance

    def __len__(self) -> int:
        return len(self._items)

    def add(self, values: list[X], now: datetime) -> None:
        if values:
            self._items.extend(values)
            self._runs.append([len(values), now + self.max_wait])

    @property
    def deadline(self) -> datetime | None:
        """When the oldest item is due (None when empty)."""
        return self._runs[0][1] if self._runs else None

    def waited(self, now: datetime) -> float:
        """Seconds the oldest item has been waiting (0 when empty; restored items count from the restore,
        as if they had waited ``max_wait``)."""
        return (now - self._runs[0][1] + self.max_wait).total_seconds() if self._runs else 0.0

    def full(self) -> bool:
        return len(self._items) >= self.max_batch

    def due(self, now: datetime) -> bool:
        """Full, or the oldest item has waited ``max_wait``."""
        return bool(self._items) and (self.full() or now >= self._runs[0][1])

    def take(self, n: int | None = None) -> list[X]:
        """The oldest ``n`` (default ``max_batch``) items, removed from the buffer."""
        n = self.max_batch if n is None else n
        head, self._items = self._items[:n], self._items[n:]
        left = len(head)
        while left and self._runs:
            run = self._runs[0]
            used = min(left, run[0])
            run[0] -= used
            left -= used
            if run[0] == 0:
                self._runs.popleft()
        return head

    def snapshot(self) -> list[X]:
        """A copy of the waiting items (what a checkpoint keeps)."""
        return list(self._items)
