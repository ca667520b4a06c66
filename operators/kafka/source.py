"""A Kafka source whose offsets live in Bytewax's recovery store.

Each topic partition is one Bytewax source partition, so a resumed flow rewinds
every partition to the offset of the last committed epoch. Compared with the
bundled ``KafkaSource`` it emits lean :class:`SourceRecord` objects and can start
from a timestamp or an explicit offset (for replays and backfills).

It never hangs silently: a broker that stays unreachable, or a topic that stays
missing, for ``give_up_after_s``, a topic that is no longer the one the
checkpoint was taken from (deleted and recreated, or a broker that lost its
data: its topic id changed, see :class:`TopicGuard`), and an offset that is no
longer in the log stop the flow through :func:`operators.lifecycle.fail` with one
line saying what happened. A requested stop
(:func:`operators.lifecycle.request_stop`) ends every partition cleanly.

With metrics on, each partition counts the records it reads and, once a second,
its lag: records not read yet (the high watermark the last fetch reported minus
the next offset; no extra broker call) and the age of the last record read while
behind (``sluice_source_lag_records`` / ``sluice_source_lag_seconds``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicCollection, TopicPartition

from operators.gc_pacing import PACER
from operators.kafka.admin import admin_client, end_offset, list_partitions, log, offset_for_time
from operators.kafka.connection import KafkaConnection
from operators.kafka.records import SourceRecord
from operators.lifecycle import fail, stop_requested
from operators.metrics import PROCESS, SCRAPES, SOURCE_LAG_RECORDS, SOURCE_LAG_SECONDS, SOURCE_RECORDS

LAG_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class PartitionPosition:
    """What a source partition keeps in the checkpoint: the next offset, and the id of the topic it belongs to."""

    offset: int
    topic_id: str | None


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

        Offsets and times are not negative: Kafka reads -1 and -2 as "the end" and "the
        beginning" *as of when they are used*, which a checkpoint must never hold.

        >>> StartAt.parse("time:1700000000000")
        StartAt(kind='time', value=1700000000000)
        >>> StartAt.parse("offset:-1")
        Traceback (most recent call last):
        ...
        ValueError: bad start position 'offset:-1': use earliest, latest, offset:N or time:EPOCH_MS
        """
        if spec in ("earliest", "latest"):
            return cls(spec)
        kind, _, num = spec.partition(":")
        if kind not in ("offset", "time") or not num.isdigit():
            raise ValueError(f"bad start position {spec!r}: use earliest, latest, offset:N or time:EPOCH_MS")
        return cls(kind, int(num))


# "the offset we hold is not in the log": retention removed it, or (on a real cluster) the topic was
# recreated or the broker lost data. Resuming elsewhere would silently skip or repeat input.
_OFFSET_GONE = frozenset({KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET})


class TopicGuard:
    """Notices, for a running reader, that its topic is unreachable, missing, or not the same topic.

    A topic deleted and recreated (or a broker that lost its data and got its topics
    back empty) keeps its name but gets a new topic id; the offsets a checkpoint
    holds belong to the old one. Some brokers (Tansu) then simply return nothing
    for those offsets, so a reader that only watched fetch errors would wait
    forever. The guard describes the topic at most every ``every_s`` (one admin
    call per topic and process, shared by its partitions) and reports its id.
    """

    _shared: dict[tuple[str, str], TopicGuard] = {}
    _lock = threading.Lock()

    def __init__(self, conn: KafkaConnection, topic: str, every_s: float = 5.0) -> None:
        self._admin = admin_client(conn)
        self.topic = topic
        self.every_s = every_s
        self._checked_at = float("-inf")
        self._answer: tuple[str, str | None] = ("unreachable", None)  # ("ok" | "missing" | "unreachable", id)
        self._check_lock = threading.Lock()

    @classmethod
    def shared(cls, conn: KafkaConnection, topic: str) -> TopicGuard:
        with cls._lock:
            key = (conn.brokers, topic)
            if key not in cls._shared:
                cls._shared[key] = cls(conn, topic)
            return cls._shared[key]

    def status(self, now: float, force: bool = False) -> tuple[str, str | None]:
        """``("ok", topic id)``, ``("missing", None)`` or ``("unreachable", None)``, at most every ``every_s``."""
        with self._check_lock:
            if force or now - self._checked_at >= self.every_s:
                self._checked_at = now
                self._answer = self._describe()
            return self._answer

    def _describe(self) -> tuple[str, str | None]:
        try:
            desc = self._admin.describe_topics(TopicCollection([self.topic]))[self.topic].result(timeout=2.0)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                return ("missing", None)
            return ("unreachable", None)
        except Exception:  # noqa: BLE001 - a timed-out future or a closed handle: the broker did not answer
            return ("unreachable", None)
        return ("ok", str(desc.topic_id))


class _PartitionReader(StatefulSourcePartition[SourceRecord, PartitionPosition]):
    def __init__(
        self,
        config: dict[str, Any],
        guard: TopicGuard,
        partition: int,
        start: StartAt,
        resume: PartitionPosition | int | None,
        batch_size: int,
        tail: bool,
        give_up_after_s: float,
    ) -> None:
        self._topic = guard.topic
        self._partition = partition
        self._guard = guard
        self._give_up_after_s = give_up_after_s
        self._trouble_since: float | None = None
        status, topic_id = guard.status(time.monotonic(), force=True)
        if status != "ok":
            fail(f"{self._where}: the topic is {status} at start")
        if isinstance(resume, int):  # a checkpoint from before topic ids were kept
            resume = PartitionPosition(resume, topic_id)
        if resume is not None and resume.topic_id not in (None, topic_id):
            fail(self._recreated(resume.topic_id, topic_id))
        self._topic_id = topic_id
        consumer = Consumer(config)
        offset = resume.offset if resume is not None else self._resolve(consumer, self._topic, partition, start)
        consumer.assign([TopicPartition(self._topic, partition, offset)])
        self._consumer = consumer
        self._offset = offset
        self._batch_size = batch_size
        self._tail = tail
        self._eof = False
        self._metric_key = (self._topic, str(partition))
        self._read = SOURCE_RECORDS.cell(self._metric_key) if PROCESS.on else None  # this worker thread's count
        self._lag_due = 0.0
        self._last_ts_ms = 0

    @property
    def _where(self) -> str:
        return f"{self._topic}[{self._partition}]"

    def _recreated(self, was: str | None, now: str | None) -> str:
        return (
            f"{self._where}: the topic is not the one the checkpoint was taken from (topic id {was} is now {now}): "
            "it was deleted and recreated, or the broker lost its data; its offsets mean nothing now. To start "
            "over, use a fresh recovery directory (and SLUICE_START_FROM)"
        )

    @staticmethod
    def _resolve(consumer: Consumer, topic: str, partition: int, start: StartAt) -> int:
        # Resolve to a concrete offset so that a snapshot taken before the first
        # message still resumes at the same place.
        if start.kind == "earliest":
            return int(consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)[0])
        if start.kind == "latest":
            return end_offset(consumer, topic, partition)
        if start.kind == "offset":
            end = end_offset(consumer, topic, partition)
            if start.value > end:  # a broker may wait for offset N in silence (Tansu) or reset (Kafka)
                log.warning("%s[%d]: offset:%d is past the end (%d): nothing is read there until it gets that far",
                            topic, partition, start.value, end)  # fmt: skip
            return start.value
        return offset_for_time(consumer, topic, partition, start.value)

    def _check_topic(self) -> None:
        now = time.monotonic()
        status, topic_id = self._guard.status(now)
        if status == "ok":
            self._trouble_since = None
            if topic_id != self._topic_id:
                fail(self._recreated(self._topic_id, topic_id))
            return
        if self._trouble_since is None:
            self._trouble_since = now
            log.warning("%s: the topic is %s; waiting up to %.0fs", self._where, status, self._give_up_after_s)
        elif now - self._trouble_since > self._give_up_after_s:
            what = "the broker has been unreachable" if status == "unreachable" else "the topic has been missing"
            fail(
                f"{self._where}: {what} for {now - self._trouble_since:.0f}s; stopping so a supervisor can restart "
                "the flow once it is back (the checkpoint is kept; SLUICE_OUTAGE_TIMEOUT_S sets the wait)"
            )

    def next_batch(self) -> list[SourceRecord]:
        if self._eof or stop_requested():
            raise StopIteration()
        self._check_topic()
        msgs = self._consumer.consume(self._batch_size, 0.001)
        batch: list[SourceRecord] = []
        append = batch.append
        topic, partition = self._topic, self._partition
        for msg in msgs:
            err = msg.error()
            if err is not None:
                self._on_error(err)
                continue
            append(
                SourceRecord(
                    topic, partition, msg.offset() or 0, msg.key(), msg.value(), msg.timestamp()[1], msg.headers()
                )
            )
        if batch:
            self._offset = batch[-1].offset + 1
        if self._read is not None:
            self._observe(batch, self._read)
            SCRAPES.render_if_asked()  # a waiting scrape is rendered here, by a thread holding the GIL anyway
        PACER.tick()  # a paced garbage collection, when one is due (operators/gc_pacing.py)
        return batch

    def _observe(self, batch: list[SourceRecord], read: list[int]) -> None:
        key = self._metric_key
        if batch:
            read[0] += len(batch)
            self._last_ts_ms = batch[-1].timestamp_ms
        now = time.monotonic()
        if now < self._lag_due:
            return
        self._lag_due = now + LAG_EVERY_S
        high = self._consumer.get_watermark_offsets(TopicPartition(self._topic, self._partition), cached=True)[1]
        if high < 0:  # no fetch response yet
            return
        behind = max(0, high - self._offset)
        SOURCE_LAG_RECORDS.set(key, behind)
        age = time.time() - self._last_ts_ms / 1000.0 if behind and self._last_ts_ms > 0 else 0.0
        SOURCE_LAG_SECONDS.set(key, max(0.0, age))

    def _on_error(self, err: KafkaError) -> None:
        code = err.code()
        if code == KafkaError._PARTITION_EOF:
            if not self._tail:
                self._eof = True
        elif code in _OFFSET_GONE:
            fail(
                f"{self._where}: offset {self._offset} is no longer in the log ({err.str()}): retention removed it, "
                "the topic was recreated, or the broker lost its data; to start over, use a fresh recovery "
                "directory (and SLUICE_START_FROM)"
            )
        elif err.fatal():
            fail(f"{self._where}: fatal consumer error: {err.str()}")
        else:  # unknown topic, transport errors: the guard decides when waiting has lasted too long
            log.debug("consuming %s: %s", self._where, err.str())

    def snapshot(self) -> PartitionPosition:
        return PartitionPosition(self._offset, self._topic_id)

    def close(self) -> None:
        self._consumer.close()


class KafkaPartitionSource(FixedPartitionedSource[SourceRecord, PartitionPosition]):
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
        give_up_after_s: float = 60.0,
    ) -> None:
        if isinstance(topics, str):
            raise TypeError("topics must be a list of topic names, not a string")
        self._topics = list(topics)
        self._start = StartAt.parse(start)
        self._tail = tail
        self._batch_size = batch_size
        self._give_up_after_s = give_up_after_s
        self._connection = connection

    def list_parts(self) -> list[str]:
        return [f"{p}-{t}" for t in self._topics for p in list_partitions(self._connection, t)]

    def build_part(self, step_id: str, for_part: str, resume_state: PartitionPosition | None) -> _PartitionReader:
        idx, topic = for_part.split("-", 1)
        config = self._connection.consumer_config(
            **{
                "group.id": "sluice-unused",  # partitions are assigned by Bytewax, not a group
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
                "auto.offset.reset": "error",  # an offset outside the log is a failure, never a silent jump
                "logger": log,
            }
        )
        guard = TopicGuard.shared(self._connection, topic)
        return _PartitionReader(
            config, guard, int(idx), self._start, resume_state, self._batch_size, self._tail, self._give_up_after_s
        )
