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
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Stream
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from operators.kafka_records import ID_HEADER, KafkaRecord
from operators.kafka_sink import DeliveryFailed, produce_all
from operators.kafka_source import list_partitions, read_to_end

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PartitionState:
    """What a sink partition keeps in the checkpoint: where its uncommitted tail starts."""

    next_offset: int


def record_id(rec: KafkaRecord) -> bytes | None:
    for name, value in rec.headers:
        if name == ID_HEADER:
            return value
    return None


def committed_ids(
    config: Mapping[str, Any], topic: str, partition: int, start: int, timeout_s: float = 60.0
) -> tuple[set[bytes], int]:
    """``sluice.id`` of every committed record in ``topic[partition]`` from ``start`` to the end,
    and the end offset."""
    msgs, ends = read_to_end(config, topic, {partition: start}, timeout_s)
    ids: set[bytes] = set()
    for msg in msgs:
        headers = msg.headers() or []
        pairs = headers.items() if isinstance(headers, dict) else headers
        ids.update(v for k, v in pairs if k == ID_HEADER and isinstance(v, bytes))
    return ids, ends[partition]


class _TransactionalPartition(StatefulSinkPartition[KafkaRecord, PartitionState]):
    def __init__(
        self, config: dict[str, Any], topic: str, partition: int, transactional_id: str, resume: PartitionState | None
    ):
        self.topic, self.partition = topic, partition
        self._producer = Producer({**config, "transactional.id": transactional_id, "linger.ms": 5})
        self._producer.init_transactions(30)  # fences a crashed predecessor, aborts its open transaction
        start = resume.next_offset if resume is not None else 0
        self._skip, self._next_offset = committed_ids(config, topic, partition, start)
        if self._skip:
            log.info(
                "%s[%d]: %d records were committed after the checkpoint; skipping them on replay",
                topic,
                partition,
                len(self._skip),
            )
        self._in_txn = False
        self._errors: list[str] = []

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(err.str())
        else:
            self._next_offset = max(self._next_offset, (msg.offset() or 0) + 1)

    def write_batch(self, items: list[KafkaRecord]) -> None:
        if self._skip:
            fresh = []
            for rec in items:
                rid = record_id(rec)
                if rid is not None and rid in self._skip:
                    self._skip.discard(rid)
                else:
                    fresh.append(rec)
            items = fresh
        if not items:
            return
        if not self._in_txn:
            self._producer.begin_transaction()
            self._in_txn = True
        try:
            produce_all(self._producer, items, self._on_delivery)
        except KafkaException as exc:
            raise DeliveryFailed(str(exc)) from exc

    def snapshot(self) -> PartitionState:
        if self._in_txn:
            try:
                self._producer.commit_transaction(60)
            except KafkaException as exc:
                raise DeliveryFailed(f"commit of {self.topic}[{self.partition}] failed: {exc}") from exc
            self._in_txn = False
            if self._errors:
                raise DeliveryFailed(f"{len(self._errors)} record(s) failed: {self._errors[0]}")
        return PartitionState(self._next_offset)

    def close(self) -> None:
        if self._in_txn:
            self.snapshot()


class TransactionalKafkaSink(FixedPartitionedSink[KafkaRecord, PartitionState]):
    """Exactly-once sink for ``(\"topic:partition\", KafkaRecord)`` items; see the module docstring."""

    def __init__(self, config: Mapping[str, Any], topics: list[str], transactional_id_prefix: str) -> None:
        self._config = dict(config)
        self._topics = sorted(topics)
        self._prefix = transactional_id_prefix
        self._parts: list[str] | None = None
        self._index: dict[str, int] = {}

    def list_parts(self) -> list[str]:
        if self._parts is None:
            self._parts = [f"{t}:{p}" for t in self._topics for p in list_partitions(self._config, t)]
            self._index = {name: i for i, name in enumerate(self._parts)}
        return self._parts

    def part_fn(self, item_key: str) -> int:
        self.list_parts()
        return self._index[item_key]

    def build_part(self, step_id: str, for_part: str, resume_state: PartitionState | None) -> _TransactionalPartition:
        topic, _, partition = for_part.rpartition(":")
        txn_id = f"{self._prefix}-{topic}-{partition}"
        return _TransactionalPartition(self._config, topic, int(partition), txn_id, resume_state)


class Partitioner:
    """Assigns a record without a partition to ``crc32(key) % partitions`` of its topic."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self._config = dict(config)
        self._counts: dict[str, int] = {}

    def __call__(self, rec: KafkaRecord) -> tuple[str, KafkaRecord]:
        if rec.partition is None:
            n = self._counts.get(rec.topic)
            if n is None:
                n = self._counts[rec.topic] = len(list_partitions(self._config, rec.topic))
            rec = replace(rec, partition=zlib.crc32(rec.key or b"") % n)
        return f"{rec.topic}:{rec.partition}", rec


def exactly_once_output(
    step_id: str, up: Stream[KafkaRecord], config: Mapping[str, Any], topics: list[str], transactional_id_prefix: str
) -> None:
    """Write ``up`` to ``topics`` exactly once (records need a ``sluice.id`` header)."""
    routed = op.map(f"{step_id}_route", up, Partitioner(config))
    op.output(step_id, routed, TransactionalKafkaSink(config, topics, transactional_id_prefix))
