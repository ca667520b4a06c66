"""A Kafka source whose offsets live in Bytewax's recovery store.

Each topic partition is one Bytewax source partition, so a resumed flow rewinds
every partition to the offset of the last committed epoch. Compared with the
bundled ``KafkaSource`` it emits lean :class:`SourceRecord` objects and can start
from a timestamp or an explicit offset (for replays and backfills).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_END, Consumer, KafkaError, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from operators.kafka_records import SourceRecord

log = logging.getLogger(__name__)


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
            raise ValueError(f"bad start position {spec!r}: use earliest|latest|offset:N|time:EPOCH_MS")
        return cls(kind, int(num))


def list_partitions(config: dict[str, Any], topic: str) -> list[int]:
    """Partition ids of ``topic``; raises if the topic does not exist."""
    meta = AdminClient(config).list_topics(topic, timeout=10).topics[topic]
    if meta.error is not None:
        raise RuntimeError(f"cannot list partitions of Kafka topic {topic!r}: {meta.error.str()}")
    return sorted(meta.partitions)


def read_to_end(
    config: Mapping[str, Any], topic: str, starts: Mapping[int, int], timeout_s: float = 60.0
) -> tuple[list[Message], dict[int, int]]:
    """Every committed record of ``topic`` from ``starts`` (partition -> offset) to the end of
    each partition, and each partition's end offset. Raises ``TimeoutError`` if the end is
    not reached in ``timeout_s``."""
    consumer = Consumer(
        {
            **config,
            "group.id": "sluice-read-to-end",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",  # a start below the log start (retention) reads what is left
        }
    )
    consumer.assign([TopicPartition(topic, p, o) for p, o in starts.items()])
    out: list[Message] = []
    ends: dict[int, int] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(ends) < len(starts):
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not read {topic} to its end within {timeout_s}s")
            for msg in consumer.consume(5000, 0.2):
                err = msg.error()
                if err is None:
                    out.append(msg)
                elif err.code() == KafkaError._PARTITION_EOF:
                    ends[msg.partition() or 0] = msg.offset() or 0
                else:
                    raise RuntimeError(f"reading {topic}[{msg.partition()}] to its end: {err}")
        return out, ends
    finally:
        consumer.close()


def end_offset(consumer: Consumer, topic: str, partition: int, timeout_s: float = 10.0) -> int:
    """The offset the next record of ``topic[partition]`` will get, as a fetch sees it.

    Reads forward from the listed high watermark to the end of the partition: some
    Kafka-compatible brokers (Tansu 0.6) list the high watermark as the last
    *batch's* base offset + 1, which would start a "latest" reader mid-batch.
    The consumer must have ``enable.partition.eof`` set; it is left unassigned.
    """
    listed = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)[1]
    consumer.assign([TopicPartition(topic, partition, max(0, listed - 1))])
    deadline = time.monotonic() + timeout_s
    end = listed
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            err = msg.error()
            offset = msg.offset() or 0
            if err is None:
                end = offset + 1
            elif err.code() == KafkaError._PARTITION_EOF:
                return offset
        return int(end)
    finally:
        consumer.unassign()


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
            append(SourceRecord(topic, partition, msg.offset() or 0, msg.key(), msg.value(), msg.timestamp()[1]))
        if batch:
            self._offset = batch[-1].offset + 1
        return batch

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


class KafkaPartitionSource(FixedPartitionedSource[SourceRecord, int]):
    """Read topics partition by partition, offsets checkpointed by Bytewax.

    >>> src = KafkaPartitionSource("127.0.0.1:9092", ["transactions"], start="earliest")
    """

    def __init__(
        self,
        brokers: str,
        topics: Iterable[str],
        *,
        start: str = "earliest",
        tail: bool = True,
        batch_size: int = 2000,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(topics, str):
            raise TypeError("topics must be a list of topic names, not a string")
        self._topics = list(topics)
        self._start = StartAt.parse(start)
        self._tail = tail
        self._batch_size = batch_size
        self._config: dict[str, Any] = {"bootstrap.servers": brokers, **(config or {})}

    def list_parts(self) -> list[str]:
        return [f"{p}-{t}" for t in self._topics for p in list_partitions(self._config, t)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _PartitionReader:
        idx, topic = for_part.split("-", 1)
        config = {
            "group.id": "sluice-unused",  # partitions are assigned by Bytewax, not a group
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
            "fetch.wait.max.ms": 5,
            **self._config,
        }
        return _PartitionReader(config, topic, int(idx), self._start, resume_state, self._batch_size, self._tail)
