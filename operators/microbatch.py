"""Latency-bounded micro-batching: one call of a batch function per micro-batch.

Items are buffered (:class:`operators.batching.BatchBuffer`) until ``max_batch``
are waiting or ``max_wait`` has passed since the FIRST buffered item, then
``fn`` runs once on the whole buffer. Bytewax's ``collect`` cannot do this: its
timeout restarts on every item, so a steady trickle never flushes on time.

Items are spread over ``shards`` keys so that every worker batches its share;
the buffer is part of the snapshot, so items waiting at a checkpoint survive a
crash.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TypeVar

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from operators.batching import BatchBuffer
from operators.clock import Clock, utc_now

X = TypeVar("X")
Y = TypeVar("Y")
S = TypeVar("S")

BatchFn = Callable[[list[X]], Sequence[Y]]


def shard_of(key: str, shards: int) -> str:
    """A stable shard name for ``key`` (stable across processes, unlike ``hash``).

    >>> shard_of("card-1", 8) == shard_of("card-1", 8)
    True
    """
    return str(zlib.crc32(key.encode()) % shards)


def call_batch(fn: BatchFn[X, Y], items: list[X]) -> list[Y]:
    """``fn(items)``, checked to give one result per item."""
    results = list(fn(items))
    if len(results) != len(items):
        raise ValueError(f"batch function returned {len(results)} results for {len(items)} items")
    return results


class MicroBatchLogic(StatefulBatchLogic[X, Y, list[X]]):
    """Buffer of one shard; flushes by size, by deadline, and at EOF."""

    def __init__(
        self, fn: BatchFn[X, Y], max_batch: int, max_wait: timedelta, buffered: list[X] | None, now_getter: Clock
    ) -> None:
        self.fn = fn
        self.now = now_getter
        self.buffer: BatchBuffer[X] = BatchBuffer(max_batch, max_wait, buffered, now_getter())

    def _flush_due(self, everything: bool = False) -> list[Y]:
        out: list[Y] = []
        now = self.now()
        while self.buffer.due(now) or (everything and len(self.buffer)):
            out.extend(call_batch(self.fn, self.buffer.take()))
        return out

    def on_batch(self, values: list[X]) -> tuple[list[Y], bool]:
        self.buffer.add(values, self.now())
        out: list[Y] = []
        while self.buffer.full():
            out.extend(call_batch(self.fn, self.buffer.take()))
        return out, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[Y], bool]:
        return self._flush_due(), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Y], bool]:
        return self._flush_due(everything=True), StatefulBatchLogic.DISCARD

    def notify_at(self) -> datetime | None:
        return self.buffer.deadline

    def snapshot(self) -> list[X]:
        return self.buffer.snapshot()


@operator
def micro_batch(
    step_id: str,
    up: Stream[X],
    fn: BatchFn[X, Y],
    shard_key: Callable[[X], str],
    max_batch: int = 256,
    max_wait: timedelta = timedelta(milliseconds=5),
    shards: int = 8,
    now_getter: Clock = utc_now,
) -> Stream[Y]:
    """Run ``fn`` on micro-batches of ``up``; ``fn`` returns one result per item, in order.

    ```python
    scores = micro_batch("score", events, model.score_batch, lambda e: e.card_id, max_batch=256)
    ```
    """
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")
    if shards < 1:
        raise ValueError("shards must be >= 1")

    def builder(resume_state: list[X] | None) -> MicroBatchLogic[X, Y]:
        return MicroBatchLogic(fn, max_batch, max_wait, resume_state, now_getter)

    return per_shard(up, shard_key, shards, builder)


def per_shard(
    up: Stream[X],
    shard_key: Callable[[X], str],
    shards: int,
    builder: Callable[[S | None], StatefulBatchLogic[X, Y, S]],
) -> Stream[Y]:
    """Spread ``up`` over ``shards`` keys, run one ``builder`` logic per shard, drop the keys again.

    Call it inside an ``@operator`` (its steps are named ``shard``, ``batch`` and ``unshard``).
    """
    keyed = op.key_on("shard", up, lambda x: shard_of(shard_key(x), shards))
    return op.map("unshard", op.stateful_batch("batch", keyed, builder), lambda kv: kv[1])
