"""Micro-batching that runs the batch function off the dataflow thread.

A slow batch function (LLM generation: seconds per call on a CPU) would stall
every other step of the worker while it runs. Here each shard hands at most one
batch at a time to a background thread and keeps buffering meanwhile; results
are emitted when the call finishes (checked every ``poll``). Torch releases the
GIL while it computes, so the rest of the flow keeps moving. The next batch
holds everything that arrived during the call, so batches grow with load.

The buffer is the same :class:`operators.batching.BatchBuffer` the synchronous
batcher uses; this logic only adds "one call in flight". Items in flight are
part of the snapshot with the buffer: after a crash they are computed again,
never lost.

Instrumented like the synchronous batcher (the call is timed on the background
thread), plus the queue depth (buffered and in flight, ``sluice_async_queue_depth``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TypeVar

from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from operators.batching import BatchBuffer, Shards, check_batching
from operators.clock import Clock, utc_now
from operators.metrics import ASYNC_QUEUE
from operators.microbatch import observed_call, per_shard
from operators.probes import Origin, StageProbe

X = TypeVar("X")
Y = TypeVar("Y")


@functools.cache
def _executor(name: str) -> ThreadPoolExecutor:
    """One background thread per step name and process: calls of a model never overlap."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sluice-{name}")


class AsyncBatchLogic(StatefulBatchLogic[X, Y, list[X]]):
    """Buffer of one shard plus at most one batch in flight."""

    def __init__(
        self,
        fn: Callable[[list[X]], Sequence[Y]],
        executor: ThreadPoolExecutor,
        max_batch: int,
        max_wait: timedelta,
        poll: timedelta,
        resume: list[X] | None,
        now_getter: Clock = utc_now,
        probe: StageProbe[X] | None = None,
    ) -> None:
        self.fn = fn
        self.executor = executor
        self.poll = poll
        self.now = now_getter
        self.buffer: BatchBuffer[X] = BatchBuffer(max_batch, max_wait, resume, now_getter())
        self.inflight: tuple[list[X], Future[list[Y]]] | None = None
        self.probe: StageProbe[X] = probe or StageProbe("async_micro_batch")
        ASYNC_QUEUE.watch(self, _queue_depth)

    @property
    def depth(self) -> int:
        """Items buffered plus the batch in flight (read by the metrics collector from another thread)."""
        inflight = self.inflight
        return len(self.buffer) + (len(inflight[0]) if inflight else 0)

    def _collect(self) -> list[Y]:
        if self.inflight is None or not self.inflight[1].done():
            return []
        _, fut = self.inflight
        self.inflight = None
        return fut.result()  # an exception in the batch function fails the flow, as a sync step would

    def _maybe_submit(self, force: bool = False) -> None:
        now = self.now()
        if self.inflight is None and len(self.buffer) and (force or self.buffer.due(now)):
            waited = self.buffer.waited(now)
            items = self.buffer.take()
            self.inflight = (items, self.executor.submit(observed_call, self.fn, items, self.probe, waited))

    def _step(self) -> list[Y]:
        out = self._collect()
        self._maybe_submit()
        return out

    def on_batch(self, values: list[X]) -> tuple[list[Y], bool]:
        self.buffer.add(values, self.now())
        return self._step(), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[Y], bool]:
        return self._step(), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Y], bool]:
        out: list[Y] = []
        while self.inflight is not None or len(self.buffer):
            if self.inflight is not None:
                self.inflight[1].result()
            out.extend(self._collect())
            self._maybe_submit(force=True)
        return out, StatefulBatchLogic.DISCARD

    def notify_at(self) -> datetime | None:
        if self.inflight is not None:
            return self.now() + self.poll
        return self.buffer.deadline

    def snapshot(self) -> list[X]:
        return (list(self.inflight[0]) if self.inflight else []) + self.buffer.snapshot()


def _queue_depth(logic: AsyncBatchLogic[X, Y]) -> list[tuple[tuple[str, ...], float]]:
    return [(logic.probe.key, logic.depth)]


@operator
def async_micro_batch(
    step_id: str,
    up: Stream[X],
    fn: Callable[[list[X]], Sequence[Y]],
    shard_key: Callable[[X], str],
    max_batch: int = 16,
    max_wait: timedelta = timedelta(milliseconds=5),
    shards: Shards = 1,
    poll: timedelta = timedelta(milliseconds=2),
    now_getter: Clock = utc_now,
    origin: Origin[X] | None = None,
) -> Stream[Y]:
    """Like :func:`operators.microbatch.micro_batch`, but ``fn`` runs on a background thread
    (``origin``: the input record an item came from, for event ages and spans).

    ```python
    answers = async_micro_batch("generate", prompts, llm.answer_batch, lambda p: p.session, max_batch=16)
    ```
    """
    check_batching(max_batch)

    probe: StageProbe[X] = StageProbe(step_id, origin)

    def builder(resume: list[X] | None) -> AsyncBatchLogic[X, Y]:
        return AsyncBatchLogic(fn, _executor(step_id), max_batch, max_wait, poll, resume, now_getter, probe)

    return per_shard(up, shard_key, shards, builder)
