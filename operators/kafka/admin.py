"""Admin helpers on one :class:`KafkaConnection`: topics, partitions, reading to the end.

Every client made here logs through Python's ``logging`` (logger
``sluice.kafka``) instead of librdkafka's own stderr lines, so a tool that waits
for a broker that is still starting prints nothing alarming.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Generator, Iterable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from operators.kafka.connection import KafkaConnection

log = logging.getLogger("sluice.kafka")


class TopicsMissing(RuntimeError):
    """Topics a flow reads or writes do not exist (they are never auto-created)."""


class BrokerUnreachable(ConnectionError):
    """No broker answered within the connect timeout."""


def admin_client(conn: KafkaConnection) -> AdminClient:
    return AdminClient(conn.client_config(logger=log))


def topic_partitions(conn: KafkaConnection, topics: Iterable[str], timeout_s: float = 10.0) -> dict[str, int]:
    """``{topic: partition count}`` of the topics that exist among ``topics``."""
    meta = admin_client(conn).list_topics(timeout=timeout_s)
    return {t: len(meta.topics[t].partitions) for t in topics if t in meta.topics and meta.topics[t].error is None}


def list_partitions(conn: KafkaConnection, topic: str, timeout_s: float = 10.0) -> list[int]:
    """Partition ids of ``topic``; raises :class:`TopicsMissing` if it does not exist.

    Asks for every topic's metadata, not ``topic``'s: a metadata request that names a topic lets a
    broker with auto-creation on (Kafka's default, Tansu) create it, so a typo would become a topic.
    """
    meta = admin_client(conn).list_topics(timeout=timeout_s).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        reason = meta.error.str() if meta is not None and meta.error is not None else "no such topic"
        raise TopicsMissing(f"Kafka topic {topic!r} is not available on {conn.brokers}: {reason}")
    return sorted(meta.partitions)


def check_broker(conn: KafkaConnection, timeout_s: float) -> None:
    """Raise :class:`BrokerUnreachable` (one line, naming the brokers) unless a broker answers in ``timeout_s``."""
    try:
        admin_client(conn).list_topics(timeout=timeout_s)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else exc
        reason = err.str() if isinstance(err, KafkaError) else str(err)
        raise BrokerUnreachable(
            f"no Kafka broker answered at {conn.brokers} within {timeout_s:g}s ({reason}); "
            "check SLUICE_BROKERS (and SLUICE_KAFKA_* security options) or raise SLUICE_CONNECT_TIMEOUT_S"
        ) from None


def require_topics(conn: KafkaConnection, topics: Iterable[str], timeout_s: float = 10.0) -> None:
    """Raise :class:`TopicsMissing` naming every topic of ``topics`` that does not exist."""
    wanted = list(dict.fromkeys(topics))
    missing = [t for t in wanted if t not in topic_partitions(conn, wanted, timeout_s)]
    if missing:
        raise TopicsMissing(
            f"Kafka topic(s) {', '.join(missing)} do not exist on {conn.brokers}; "
            "create them (`sluice stack topics`) or fix the SLUICE_*_TOPIC setting"
        )


def create_topics(
    conn: KafkaConnection,
    topics: Mapping[str, int],
    timeout_s: float = 15.0,
    replication_factor: int = 1,
    config: Mapping[str, str] | None = None,
) -> list[str]:
    """Create ``{name: partitions}`` topics that do not exist yet; returns the ones created.
    ``replication_factor`` -1 is the cluster's default (for a topic a tool creates on a real cluster)."""
    admin = admin_client(conn)
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [
        NewTopic(t, num_partitions=n, replication_factor=replication_factor, config=dict(config or {}))
        for t, n in topics.items()
        if t not in existing
    ]
    if not wanted:
        return []
    for topic, fut in admin.create_topics(wanted).items():
        try:
            fut.result(timeout=timeout_s)
        except KafkaException as exc:
            if "already exists" not in str(exc).lower():
                raise RuntimeError(f"could not create Kafka topic {topic}: {exc}") from exc
    deadline = time.monotonic() + timeout_s
    names = [t.topic for t in wanted]
    while set(names) - set(topic_partitions(conn, names)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics {names} were created but their metadata did not appear in {timeout_s}s")
        time.sleep(0.1)
    return names


def delete_topics(conn: KafkaConnection, topics: Iterable[str], timeout_s: float = 15.0) -> None:
    """Delete topics (missing ones are ignored)."""
    names = list(topics)
    if not names:
        return
    admin = admin_client(conn)  # held until the futures resolve: a destroyed handle cancels them
    for topic, fut in admin.delete_topics(names).items():
        try:
            fut.result(timeout=timeout_s)
        except KafkaException as exc:
            if "unknown topic" not in str(exc).lower():
                raise RuntimeError(f"could not delete Kafka topic {topic}: {exc}") from exc


def reader(conn: KafkaConnection, group: str, **extra: Any) -> Consumer:
    """A consumer for tools: partitions are assigned by hand, nothing is committed, committed data only."""
    return Consumer(
        conn.consumer_config(
            **{
                "group.id": group,
                "enable.auto.commit": False,
                "isolation.level": "read_committed",
                "logger": log,
                **extra,
            }
        )
    )


def read_to_end(
    conn: KafkaConnection, topic: str, starts: Mapping[int, int], timeout_s: float = 60.0
) -> tuple[list[Message], dict[int, int]]:
    """Every committed record of ``topic`` from ``starts`` (partition -> offset) to the end of
    each partition, and where each partition's read ended: its end offset, or past the last record
    returned when records arrived after the end was reached (the partition is fetched until every
    other one has reached its end too), so a read from there returns none of them again. Raises
    ``TimeoutError`` if the end is not reached in ``timeout_s``."""
    consumer = reader(
        conn,
        "sluice-read-to-end",
        **{
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",  # a start below the log start (retention) reads what is left
            "fetch.min.bytes": 1,
            "fetch.wait.max.ms": 10,
        },
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
                err, partition = msg.error(), msg.partition() or 0
                if err is None:
                    out.append(msg)
                    if partition in ends:  # arrived after this partition's end was reached
                        ends[partition] = max(ends[partition], (msg.offset() or 0) + 1)
                elif err.code() == KafkaError._PARTITION_EOF:
                    ends[partition] = msg.offset() or 0
                else:
                    raise RuntimeError(f"reading {topic}[{msg.partition()}] to its end: {err}")
        return out, ends
    finally:
        consumer.close()


def last_record(conn: KafkaConnection, topic: str, partition: int, timeout_s: float = 30.0) -> Message | None:
    """The last committed record of ``topic[partition]`` (None when it has none)."""
    last = newest_records(conn, topic, 1, [partition], timeout_s)[partition]
    return last[-1] if last else None


def newest_records(
    conn: KafkaConnection, topic: str, n: int, partitions: Iterable[int] | None = None, timeout_s: float = 30.0
) -> dict[int, list[Message]]:
    """The last ``n`` committed records of each partition of ``topic`` (all, or ``partitions``), oldest first.

    Reads backwards in growing steps from each partition's listed high watermark, only for the partitions
    still short: the last offsets may be transaction markers, which hold no record. Never below a
    partition's low watermark (what retention left), so a short partition does not make it read on and on.
    """
    consumer = reader(conn, "sluice-newest-records")
    try:
        wanted = list_partitions(conn, topic) if partitions is None else list(partitions)
        marks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in wanted}
    finally:
        consumer.close()
    out: dict[int, list[Message]] = {p: [] for p in marks}
    back, short = dict.fromkeys(marks, n), set(marks)
    while short:
        starts = {p: max(marks[p][0], marks[p][1] - back[p]) for p in short}
        msgs, _ = read_to_end(conn, topic, starts, timeout_s)
        for p in starts:
            out[p] = [m for m in msgs if m.partition() == p][-n:]
            if len(out[p]) >= n or starts[p] <= marks[p][0]:
                short.discard(p)
            else:
                back[p] *= 8
    return out


def read_all(conn: KafkaConnection, topic: str, timeout_s: float = 30.0) -> list[Message]:
    """Every committed message currently in ``topic`` (all partitions), read to the end."""
    return read_to_end(conn, topic, dict.fromkeys(list_partitions(conn, topic), 0), timeout_s)[0]


def end_offset(consumer: Consumer, topic: str, partition: int, timeout_s: float = 10.0) -> int:
    """The offset the next record of ``topic[partition]`` will get, as a fetch sees it.

    Reads forward from the listed high watermark to the end of the partition: some
    Kafka-compatible brokers (Tansu 0.6) list the high watermark as the last
    *batch's* base offset + 1, which would start a "latest" reader mid-batch.
    The consumer must have ``enable.partition.eof`` set; it is left unassigned.
    """
    listed = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)[1]
    end = listed
    with contextlib.closing(_read_from(consumer, topic, partition, max(0, listed - 1), timeout_s)) as messages:
        for msg in messages:
            if msg.error() is not None:  # the end of the partition
                return msg.offset() or 0
            end = (msg.offset() or 0) + 1
    return int(end)


def _read_from(
    consumer: Consumer, topic: str, partition: int, offset: int, timeout_s: float
) -> Generator[Message, None, None]:
    """``topic[partition]``'s records from ``offset``, then its end-of-partition event (whose offset is the
    end), for at most ``timeout_s``; other errors are skipped. The consumer is unassigned when done."""
    consumer.assign([TopicPartition(topic, partition, offset)])
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None:
                continue
            err = msg.error()
            if err is None or err.code() == KafkaError._PARTITION_EOF:
                yield msg
                if err is not None:
                    return
    finally:
        consumer.unassign()


def offset_for_time(consumer: Consumer, topic: str, partition: int, at_ms: int, timeout_s: float = 10.0) -> int:
    """The offset of ``topic[partition]``'s first record stamped at or after ``at_ms``; the end offset when
    there is none yet (a concrete offset: a checkpoint must never hold Kafka's "end as of now").

    The broker's answer is checked against the record it points at. Kafka answers -1 when no
    record is that recent, but Tansu 0.6 answers 0, which would start the reader at the
    beginning of the partition. The consumer must have ``enable.partition.eof`` set; it is
    left unassigned.
    """
    found = int(consumer.offsets_for_times([TopicPartition(topic, partition, at_ms)], timeout=timeout_s)[0].offset)
    if found >= 0:
        with contextlib.closing(_read_from(consumer, topic, partition, found, timeout_s)) as messages:
            first = next(messages, None)  # the record the broker points at, or the end
        if first is not None and first.error() is None and first.timestamp()[1] >= at_ms:
            return found
    return end_offset(consumer, topic, partition, timeout_s)


def end_offsets(conn: KafkaConnection, topic: str) -> dict[int, int]:
    """``{partition: end offset}`` of ``topic`` (see :func:`end_offset`)."""
    consumer = reader(conn, "sluice-end-offsets", **{"enable.partition.eof": True})
    try:
        return {p: end_offset(consumer, topic, p) for p in list_partitions(conn, topic)}
    finally:
        consumer.close()
