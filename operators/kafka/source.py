"""A Kafka source whose offsets live in Bytewax's recovery store.

Each topic partition is one Bytewax source partition, so a resumed flow rewinds
every partition to the offset of the last committed epoch. Compared with the
bundled ``KafkaSource`` it emits lean :class:`SourceRecord` objects and can start
from a timestamp or an explicit offset (for replays and backfills).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_END, Consumer, KafkaError, TopicPartition

from operators.kafka.admin import end_offset, list_partitions, log
from operators.kafka.connection import KafkaConnection
from operators.kafka.records import SourceRecord


@dataclass(frozen=True)
class StartAt:
    """Where a partition starts when the recovery store has no offset for it.

    ``earliest``, ``latest``, ``offset:N`` or ``time:EPOCH_MS``.
    """

    kind: str
    value: int = 0

    @classmethod
    def parse(cls, spec: str) -> StartAt:
        """Parse ``earliest|latest|offset:N|time:EPOCH_MS``.

        >>> StartAt.parse("time:1700000000000")
        StartAt(kind='time', value=1700000000000)
        """
        if spec in ("earliest", "latest"):
            return cls(spec)
        kind, _, num = spec.partition(":")
        if kind not in ("offset", "time") or not num.lstrip("-").isdigit():
            raise ValueError(f"bad start position {spec!r}: use earliest, latest, offset:N or time:EPOCH_MS")
        return cls(kind, int(num))


class _PartitionReader(StatefulSourcePartition[SourceRecord, int]):
    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        partition: int,
        start: StartAt,
        resume_offset: int | None,
        batch_size: int,
        tail: bool,
    ) -> None:
        consumer = Consumer(config)
        offset = resume_offset if resume_offset is not None else self._resolve(consumer, topic, partition, start)
        consumer.assign([TopicPartition(topic, partition, offset)])
        self._consumer = consumer
        self._topic = topic
        self._partition = partition
        self._offset = offset
        self._batch_size = batch_size
        self._tail = tail
        self._eof = False

    @staticmethod
    def _resolve(consumer: Consumer, topic: str, partition: int, start: StartAt) -> int:
        # Resolve to a concrete offset so that a snapshot taken before the first
        # message still resumes at the same place.
        if start.kind == "earliest":
            return int(consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[0])
        if start.kind == "latest":
            return end_offset(consumer, topic, partition)
        if start.kind == "offset":
            return start.value
        found = consumer.offsets_for_times([TopicPartition(topic, partition, start.value)], timeout=10)
        return int(found[0].offset) if found[0].offset >= 0 else int(OFFSET_END)

    def next_batch(self) -> list[SourceRecord]:
        if self._eof:
            raise StopIteration()
        msgs = self._consumer.consume(self._batch_size, 0.001)
        batch: list[SourceRecord] = []
        append = batch.append
        topic, partition = self._topic, self._partition
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if not self._tail:
                        self._eof = True
                    continue
                if err.fatal():
                    raise RuntimeError(f"fatal error consuming {topic}[{partition}]: {err}")
                log.warning("transient error consuming %s[%d]: %s", topic, partition, err)
                continue
            append(
                SourceRecord(
                    topic, partition, msg.offset() or 0, msg.key(), msg.value(), msg.timestamp()[1], msg.headers()
                )
            )
        if batch:
            self._offset = batch[-1].offset + 1
        return batch

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


class KafkaPartitionSource(FixedPartitionedSource[SourceRecord, int]):
    """Read topics partition by partition, offsets checkpointed by Bytewax.

    >>> src = KafkaPartitionSource(KafkaConnection("127.0.0.1:9092"), ["transactions"], start="earliest")
    """

    def __init__(
        self,
        connection: KafkaConnection,
        topics: Iterable[str],
        *,
        start: str = "earliest",
        tail: bool = True,
        batch_size: int = 2000,
    ) -> None:
        if isinstance(topics, str):
            raise TypeError("topics must be a list of topic names, not a string")
        self._topics = list(topics)
        self._start = StartAt.parse(start)
        self._tail = tail
        self._batch_size = batch_size
        self._connection = connection

    def list_parts(self) -> list[str]:
        return [f"{p}-{t}" for t in self._topics for p in list_partitions(self._connection, t)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _PartitionReader:
        idx, topic = for_part.split("-", 1)
        config = self._connection.consumer_config(
            **{
                "group.id": "sluice-unused",  # partitions are assigned by Bytewax, not a group
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
                "logger": log,
            }
        )
        return _PartitionReader(config, topic, int(idx), self._start, resume_state, self._batch_size, self._tail)
