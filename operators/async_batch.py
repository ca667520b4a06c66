"""Micro-batching that runs the batch function off the dataflow thread.

A slow batch function (LLM generation: seconds per call on a CPU) would stall
every other step of the worker while it runs. Here each shard hands at most one
batch at a time to a background thread and keeps buffering meanwhile; results
are emitted when the call finishes (checked every ``poll``). Torch releases the
GIL while it computes, so the rest of the flow keeps moving. The next batch
holds everything that arrived during the call, so batches grow with load.

Items in flight are part of the snapshot with the buffer: after a crash they
are computed again, never lost.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from operators.microbatch import per_shard

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
    ) -> None:
        self.fn = fn
        self.executor = executor
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.poll = poll
        self.buffer: list[X] = list(resume or [])
        self.deadline: datetime | None = datetime.now(UTC) if self.buffer else None
        self.inflight: tuple[list[X], Future[Sequence[Y]]] | None = None

    def _collect(self) -> list[Y]:
        if self.inflight is None or not self.inflight[1].done():
            return []
        items, fut = self.inflight
        self.inflight = None
        results = list(fut.result())  # an exception in the batch function fails the flow, as a sync step would
        if len(results) != len(items):
            raise ValueError(f"batch function returned {len(results)} results for {len(items)} items")
        return results

    def _maybe_submit(self, force: bool = False) -> None:
        if self.inflight is not None or not self.buffer:
            return
        due = self.deadline is not None and datetime.now(UTC) >= self.deadline
        if force or due or len(self.buffer) >= self.max_batch:
            items, self.buffer = self.buffer[: self.max_batch], self.buffer[self.max_batch :]
            self.inflight = (items, self.executor.submit(self.fn, items))
            self.deadline = datetime.now(UTC) if self.buffer else None

    def _step(self) -> list[Y]:
        out = self._collect()
        self._maybe_submit()
        return out

    def on_batch(self, values: list[X]) -> tuple[list[Y], bool]:
        if not self.buffer:
            self.deadline = datetime.now(UTC) + self.max_wait
        self.buffer.extend(values)
        return self._step(), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[Y], bool]:
        return self._step(), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Y], bool]:
        out: list[Y] = []
        while self.inflight is not None or self.buffer:
            if self.inflight is not None:
                self.inflight[1].result()
            out.extend(self._collect())
            self._maybe_submit(force=True)
        return out, StatefulBatchLogic.DISCARD

    def notify_at(self) -> datetime | None:
        if self.inflight is not None:
            return datetime.now(UTC) + self.poll
        return self.deadline

    def snapshot(self) -> list[X]:
        return (list(self.inflight[0]) if self.inflight else []) + list(self.buffer)


@operator
def async_micro_batch(
    step_id: str,
    up: Stream[X],
    fn: Callable[[list[X]], Sequence[Y]],
    shard_key: Callable[[X], str],
    max_batch: int = 16,
    max_wait: timedelta = timedelta(milliseconds=5),
    shards: int = 1,
    poll: timedelta = timedelta(milliseconds=2),
) -> Stream[Y]:
    """Like :func:`operators.microbatch.micro_batch`, but ``fn`` runs on a background thread.

    ```python
    answers = async_micro_batch("generate", prompts, llm.answer_batch, lambda p: p.session, max_batch=16)
    ```
    """
    if max_batch < 1:
        raise ValueError("max_batch must be >= 1")

    def builder(resume: list[X] | None) -> AsyncBatchLogic[X, Y]:
        return AsyncBatchLogic(fn, _executor(step_id), max_batch, max_wait, poll, resume)

    return per_shard(up, shard_key, shards, builder)
