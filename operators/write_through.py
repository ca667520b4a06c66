"""Write-through to an online store: one versioned, pipelined write per batch, nothing lost while it is down.

Items pass through unchanged; on the way each one's ``(version, fields)`` is
written under its key, all of a runtime batch in one call of ``write`` (e.g.
:meth:`state.feature_store.FeatureStore.put_versioned`: one pipelined round
trip, each write applied only when newer than what the store holds).

Why this shape:

* **Versioned writes make replays harmless.** After a crash the flow replays
  the input since the last checkpoint and writes the same values again with the
  same versions; the store keeps whichever is newest, so it ends exactly where a
  crash-free run ends, and never moves backwards in between.
* **Unwritten values are state.** When ``write`` reports the store unreachable,
  the newest value of every key waits in the step (and in its snapshot) and is
  retried every ``retry_after`` and with every later batch. Without that, a
  checkpoint taken during an outage would count state whose write was never
  made, and a crash would lose it for good (the input before a checkpoint is
  not replayed).
* Only the newest version per key is kept while waiting: older ones would be
  overwritten anyway.
* **A run that ends leaves the store complete.** At the end of the input (a
  replay, a backfill, ``stop_at_end``) a timer would never fire again, so the
  step retries there and then, every ``retry_after`` for up to
  ``eof_patience``; only after that does it let the run end with values that
  are in its snapshot alone (logged as an error: the next run writes them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import TypeVar

from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from operators.batching import Shards
from operators.clock import Clock, utc_now
from operators.microbatch import per_shard

X = TypeVar("X")

log = logging.getLogger(__name__)

Fields = Mapping[str, bytes | str]
Pending = dict[str, tuple[int, Fields]]
WriteMany = Callable[[Pending], bool]  # True when written (stale versions count as written), False: store down


class WriteThroughLogic(StatefulBatchLogic[X, X, Pending]):
    """One shard: values waiting to be written (only while the store is unreachable)."""

    def __init__(
        self,
        writer_factory: Callable[[], WriteMany],
        record: Callable[[X], tuple[str, int, Fields]],
        retry_after: timedelta,
        resume: Pending | None,
        now_getter: Clock,
        eof_patience: timedelta = timedelta(seconds=30),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.writer_factory = writer_factory
        self.eof_patience = eof_patience
        self.sleep = sleep
        self.write: WriteMany | None = None
        self.record = record
        self.retry_after = retry_after
        self.now = now_getter
        self.pending: Pending = dict(resume or {})
        self.retry_at: datetime | None = now_getter() if self.pending else None

    def _flush(self) -> None:
        if not self.pending:
            return
        if self.write is None:
            self.write = self.writer_factory()  # built on the worker: a client with sockets is never pickled
        if self.write(self.pending):
            self.pending = {}
            self.retry_at = None
        else:
            self.retry_at = self.now() + self.retry_after

    def on_batch(self, values: list[X]) -> tuple[list[X], bool]:
        for x in values:
            key, version, fields = self.record(x)
            held = self.pending.get(key)
            if held is None or version >= held[0]:
                self.pending[key] = (version, fields)
        self._flush()
        return values, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[X], bool]:
        self._flush()
        return [], StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[X], bool]:
        """Write what waits before the run ends (each shard waits up to ``eof_patience`` on its own)."""
        give_up_at = self.now() + self.eof_patience
        self._flush()
        while self.pending and self.now() < give_up_at:
            self.sleep(self.retry_after.total_seconds())
            self._flush()
        if self.pending:
            log.error(
                "the input ended with %d values still unwritten after %.0fs of retries; they are in the "
                "snapshot and the next run writes them",
                len(self.pending),
                self.eof_patience.total_seconds(),
            )
        return [], StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        return self.retry_at

    def snapshot(self) -> Pending:
        return dict(self.pending)


@operator
def write_through(
    step_id: str,
    up: Stream[X],
    writer_factory: Callable[[], WriteMany],
    record: Callable[[X], tuple[str, int, Fields]],
    shards: Shards = 1,
    retry_after: timedelta = timedelta(seconds=1),
    now_getter: Clock = utc_now,
    eof_patience: timedelta = timedelta(seconds=30),
) -> Stream[X]:
    """Write each item's ``record(item) = (key, version, fields)`` through ``write``; pass the items on.

    ```python
    users = write_through("users_to_redis", tastes, lambda: store.try_put_versioned, lambda t: (t.user, t.version, t.fields))
    ```
    """

    def builder(resume: Pending | None) -> WriteThroughLogic[X]:
        return WriteThroughLogic(writer_factory, record, retry_after, resume, now_getter, eof_patience)

    return per_shard(up, lambda x: record(x)[0], shards, builder)
