"""Exactly-once Kafka output: one transaction per epoch, committed with the checkpoint.

How it works (Bytewax 0.21 has no "checkpoint completed" callback):

* The sink has one partition per output ``topic:partition``. Each owns a
  transactional producer with a stable ``transactional.id``
  (``<prefix>-<topic>-<partition>``). Records carry a ``sluice.id`` header, a
  stable identity of the input they came from (its source topic/partition/offset).
* Records of an epoch go into one open transaction; :meth:`snapshot` (called by
  Bytewax at the end of the epoch) commits it and returns the partition's next
  offset, which Bytewax stores in the same checkpoint as the input offsets and
  the operator state.
* On resume, ``init_transactions`` fences the crashed producer and aborts its open
  transaction. The sink then reads its partition (read_committed) from the stored
  offset to the end: those are records committed *after* the checkpoint it
  resumed from (a crash between the Kafka commit and the checkpoint commit). Their
  ``sluice.id`` values are skipped when the replay produces them again.

So each input yields exactly one committed record, provided that (1) the flow
is deterministic per input (the same input gives the same record on replay),
(2) this sink is the only writer of its output partitions, and (3) the reader
uses ``isolation.level=read_committed``. Output becomes visible when its epoch
commits, so latency is about one epoch (``-s``). A fresh run (no checkpoint)
reads the whole partition once, so re-running the same input into the same
topic adds nothing: the topic keeps one record per input.

On a broker that does not hide aborted records from read_committed readers
(Tansu 0.6 lists no aborted transactions), an aborted record stays visible; the
resume scan sees it too and does not write it again, so readers of that broker
still see each input once.

A chained topic's partition (:class:`operators.kafka.sink.Sealer`) continues its
hash chain from the last record a reader can see after the fencing: on Kafka the
aborted records are gone and the replay writes them again as the next links; on
Tansu they stay, are skipped on replay, and the chain continues after them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from bytewax.outputs import StatefulSinkPartition
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from operators.batching import flat
from operators.kafka.admin import log, read_to_end
from operators.kafka.connection import KafkaConnection
from operators.kafka.records import ID_HEADER, KafkaRecord, header_value
from operators.kafka.sink import (
    SINK_PROBE,
    DeliveryFailed,
    Sealer,
    TopicPartitionedSink,
    count_written,
    ms_since,
    produce_all,
)
from operators.metrics import COMMIT_DURATION, PROCESS, REPLAY_SKIPPED, TRANSACTIONS


@dataclass(frozen=True)
class PartitionState:
    """What a sink partition keeps in the checkpoint: where its uncommitted tail starts."""

    next_offset: int


def record_id(rec: KafkaRecord) -> bytes | None:
    """The ``sluice.id`` header of a record to produce."""
    return header_value(rec.headers, ID_HEADER)


def committed_ids(
    conn: KafkaConnection, topic: str, partition: int, start: int, timeout_s: float = 60.0
) -> tuple[set[bytes], int]:
    """``sluice.id`` of every committed record in ``topic[partition]`` from ``start`` to the end,
    and the end offset."""
    msgs, ends = read_to_end(conn, topic, {partition: start}, timeout_s)
    ids = {v for v in (header_value(m.headers(), ID_HEADER) for m in msgs) if v is not None}
    return ids, ends[partition]


class SkipList:
    """Ids committed after the checkpoint a partition resumed from: each is skipped once when replayed.

    >>> skip = SkipList({b"tx/0/5"})
    >>> [r.value for r in skip.fresh([KafkaRecord("t", None, b"a", [(ID_HEADER, b"tx/0/5")]),
    ...                               KafkaRecord("t", None, b"b", [(ID_HEADER, b"tx/0/6")])])]
    [b'b']
    >>> len(skip)
    0
    """

    def __init__(self, ids: set[bytes]) -> None:
        self._ids = set(ids)

    def __len__(self) -> int:
        return len(self._ids)

    def fresh(self, items: list[KafkaRecord]) -> list[KafkaRecord]:
        if not self._ids:
            return items
        out = []
        for rec in items:
            rid = record_id(rec)
            if rid is not None and rid in self._ids:
                self._ids.discard(rid)
            else:
                out.append(rec)
        return out


class _TransactionalPartition(StatefulSinkPartition[list[KafkaRecord], PartitionState]):
    def __init__(
        self,
        conn: KafkaConnection,
        topic: str,
        partition: int,
        transactional_id: str,
        resume: PartitionState | None,
        chain: Callable[[], Sealer | None] = lambda: None,
    ):
        self.topic, self.partition = topic, partition
        config = conn.producer_config(**{"transactional.id": transactional_id, "linger.ms": 5, "logger": log})
        self._producer = Producer(config)
        self._producer.init_transactions(30)  # fences a crashed predecessor, aborts its open transaction
        start = resume.next_offset if resume is not None else 0
        skip, self._next_offset = committed_ids(conn, topic, partition, start)
        self._skip = SkipList(skip)
        if skip:
            since = "after the checkpoint" if resume is not None else "before this flow's first checkpoint"
            log.info(
                "%s[%d]: %d records in the topic were committed %s; inputs they answer are not written again",
                topic,
                partition,
                len(skip),
                since,
            )
        self._sealer = chain()  # after the fencing: the chain continues from what stays in the partition
        self._in_txn = False
        self._errors: list[str] = []

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(err.str())
        else:
            self._next_offset = max(self._next_offset, (msg.offset() or 0) + 1)

    def write_batch(self, groups: list[list[KafkaRecord]]) -> None:
        started = SINK_PROBE.start()
        items = flat(groups)
        fresh = self._skip.fresh(items)
        if started and PROCESS.on and len(fresh) < len(items):
            REPLAY_SKIPPED.add((), len(items) - len(fresh))
        if not fresh:
            return
        if self._sealer is not None:
            fresh = self._sealer.seal(fresh)
        if not self._in_txn:
            self._producer.begin_transaction()
            self._in_txn = True
        try:
            produce_all(self._producer, fresh, self._on_delivery, self.partition)
        except KafkaException as exc:
            raise DeliveryFailed(str(exc)) from exc
        count_written(self.topic, fresh, started)

    def snapshot(self) -> PartitionState:
        if self._in_txn:
            started = time.perf_counter_ns()
            try:
                self._producer.commit_transaction(60)
            except KafkaException as exc:
                self._abort()
                raise DeliveryFailed(f"commit of {self.topic}[{self.partition}] failed: {exc}") from exc
            self._in_txn = False
            if PROCESS.on:
                COMMIT_DURATION.observe((), ms_since(started))
                TRANSACTIONS.add(("committed",))
            if self._errors:
                raise DeliveryFailed(f"{len(self._errors)} record(s) failed: {self._errors[0]}")
        return PartitionState(self._next_offset)

    def _abort(self) -> None:
        """Abort the open transaction after a failed commit (the flow then stops; a restart replays the
        epoch). Counted, so aborted transactions show on the dashboard."""
        if PROCESS.on:
            TRANSACTIONS.add(("aborted",))
        try:
            self._producer.abort_transaction(10)
        except KafkaException as exc:
            log.warning("%s[%d]: aborting the failed transaction failed too: %s", self.topic, self.partition, exc)
        self._in_txn = False

    def close(self) -> None:
        if self._in_txn:
            self.snapshot()


class TransactionalKafkaSink(TopicPartitionedSink[PartitionState]):
    """Exactly-once sink for ``(\"topic:partition\", KafkaRecord)`` items; see the module docstring."""

    def __init__(
        self,
        connection: KafkaConnection,
        topics: Iterable[str],
        transactional_id_prefix: str,
        chained_topics: Iterable[str] = (),
    ) -> None:
        super().__init__(connection, topics, chained_topics)
        self._prefix = transactional_id_prefix

    def build_part(self, step_id: str, for_part: str, resume_state: PartitionState | None) -> _TransactionalPartition:
        topic, _, partition = for_part.rpartition(":")
        txn_id = f"{self._prefix}-{topic}-{partition}"
        return _TransactionalPartition(
            self._connection,
            topic,
            int(partition),
            txn_id,
            resume_state,
            functools.partial(self.sealer, topic, int(partition)),
        )
