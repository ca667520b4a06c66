"""Side results of a batch function, taken out as a stream of their own.

A micro-batched model call must return exactly one result per input, yet it is
also the one place that holds the whole batch's scores and feature rows (what
drift watching needs). Copying them onto every result would cost per event;
instead the batch function :meth:`BatchTap.put` s one summary per call, and
:func:`tap_stream` emits what was put, from a step placed on the batch
function's own output stream.

Why that is exact: a tap keeps one list per worker thread; the step that
drains it is stateless, so Bytewax runs it on the same worker as the batch
call, right after the call's results arrive. Every ``put`` happens in a call
that emits at least one result (one per input), so everything put is drained by
the batch that follows it. Summaries are not checkpointed: after a crash the
replayed batches put them again.
"""

from __future__ import annotations

import threading
from typing import Any, Generic, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from operators.metrics import PROCESS

S = TypeVar("S")


class BatchTap(Generic[S]):
    """Per-worker-thread buffer of side results (see the module docstring).

    >>> tap: BatchTap[int] = BatchTap(always=True)
    >>> tap.put(1); tap.put(2)
    >>> tap.drain(), tap.drain()
    ([1, 2], [])
    """

    def __init__(self, always: bool = False) -> None:
        self._local = threading.local()
        self._always = always  # otherwise only while metrics are on (what the side results are for)

    def _items(self) -> list[S]:
        try:
            items: list[S] = self._local.items
        except AttributeError:
            items = self._local.items = []
        return items

    def put(self, item: S) -> None:
        if self._always or PROCESS.on:
            self._items().append(item)

    def drain(self) -> list[S]:
        items = self._items()
        if not items:
            return []
        out = list(items)
        items.clear()
        return out


@operator
def tap_stream(step_id: str, carrier: Stream[Any], tap: BatchTap[S]) -> Stream[S]:
    """What ``tap`` holds, emitted each time a batch of ``carrier`` (the batch function's output) passes.

    ```python
    samples: BatchTap[ScoreSample] = BatchTap()
    decisions = micro_batch("score", events, functools.partial(score_batch, tap=samples), ...)
    drift = drift_alarms("drift", tap_stream("score_samples", decisions, samples), references)
    ```
    """

    def drain(_batch: list[Any]) -> list[S]:
        return tap.drain()

    return op.flat_map_batch("drain", carrier, drain)
