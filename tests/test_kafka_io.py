"""The Kafka connectors against the real broker, and their seams in isolation."""

import gc
import os
import time
import uuid
import zlib

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from operators.kafka.admin import (
    TopicsMissing,
    create_topics,
    end_offsets,
    list_partitions,
    read_all,
    require_topics,
)
from operators.kafka.connection import KafkaConnection
from operators.kafka.output import kafka_output
from operators.kafka.records import ID_HEADER, KafkaRecord, header_value
from operators.kafka.sink import CheckedProducer, Partitioner
from operators.kafka.source import KafkaPartitionSource, StartAt
from operators.kafka.transactional import SkipList, TransactionalKafkaSink, committed_ids
from tests.helpers import produce


def _read_source(settings, start):
    flow = Dataflow("src")
    src = KafkaPartitionSource(settings.connection(), [settings.transactions_topic], start=start, tail=False)
    out: list = []
    op.output("o", op.input("in", flow, src), TestingSink(out))
    run_main(flow)
    return out


def test_source_reads_every_partition_from_each_start_position(settings):
    produce(settings, [(f"k{i}".encode(), f"v{i}".encode()) for i in range(30)])
    recs = _read_source(settings, "earliest")
    assert sorted(r.value for r in recs) == sorted(f"v{i}".encode() for i in range(30))
    assert {r.partition for r in recs} == {0, 1, 2}
    assert _read_source(settings, "latest") == []
    from_offset = _read_source(settings, "offset:2")
    per_part = {p: sum(1 for r in recs if r.partition == p) for p in (0, 1, 2)}
    assert len(from_offset) == sum(max(0, n - 2) for n in per_part.values())
    assert all(r.offset >= 2 for r in from_offset)


def test_source_starts_from_a_timestamp(settings):
    produce(settings, [(b"k", b"old")])
    time.sleep(0.05)
    cut = int(time.time() * 1000)
    time.sleep(0.05)
    produce(settings, [(b"k", b"new")])
    assert [r.value for r in _read_source(settings, f"time:{cut}")] == [b"new"]


def test_a_start_time_after_every_record_is_checkpointed_as_the_concrete_end(settings):
    """Kafka has no offset for a time after the last record; the position must still be a real offset, or a
    checkpoint taken before the partition's next record would resume at the end *then*, skipping everything
    written while the flow was down."""
    produce(settings, [(f"k{i}".encode(), b"old") for i in range(10)])
    ends = end_offsets(settings.connection(), settings.transactions_topic)
    later = int(time.time() * 1000) + 3_600_000
    src = KafkaPartitionSource(settings.connection(), [settings.transactions_topic], start=f"time:{later}", tail=False)
    for part in src.list_parts():
        reader = src.build_part("in", part, None)
        try:
            assert reader.snapshot().offset == ends[int(part.split("-", 1)[0])] >= 0
        finally:
            reader.close()


def test_start_position_errors_are_clear():
    with pytest.raises(ValueError, match="earliest, latest"):
        StartAt.parse("yesterday")
    with pytest.raises(ValueError, match="offset:N"):
        StartAt.parse("offset:-1")  # Kafka's "end as of now": not a place to resume from


def test_missing_topics_are_named_and_never_created(settings):
    conn = settings.connection()
    with pytest.raises(TopicsMissing, match="no-such-topic-x"):
        require_topics(conn, [settings.transactions_topic, "no-such-topic-x"])
    with pytest.raises(TopicsMissing):  # asking again did not auto-create it
        require_topics(conn, ["no-such-topic-x"])
    for _ in range(2):  # `sluice audit verify --topic <typo>` lists a topic's partitions the same way
        with pytest.raises(TopicsMissing, match="no-such-topic-y"):
            list_partitions(conn, "no-such-topic-y")


def _write(settings, records, **kwargs):
    flow = Dataflow("sink")
    kafka_output(
        "out",
        op.input("in", flow, TestingSource(records, batch_size=7)),
        settings.connection(),
        [settings.decisions_topic],
        **kwargs,
    )
    run_main(flow)


def test_sink_delivers_with_keys_headers_and_key_partitioning(settings):
    recs = [
        KafkaRecord(settings.decisions_topic, f"k{i}".encode(), f"v{i}".encode(), [("h", b"%d" % i)])
        for i in range(100)
    ]
    _write(settings, recs)
    got = read_all(settings.connection(), settings.decisions_topic)
    assert sorted((m.key(), m.value(), header_value(m.headers(), "h")) for m in got) == sorted(
        (r.key, r.value, r.headers[0][1]) for r in recs
    )
    assert all(m.partition() == zlib.crc32(m.key() or b"") % 3 for m in got)


def test_sink_respects_an_explicit_partition(settings):
    _write(settings, [KafkaRecord(settings.decisions_topic, b"same-key", b"%d" % i, partition=i % 3) for i in range(9)])
    got = read_all(settings.connection(), settings.decisions_topic)
    assert sorted((m.partition(), m.value()) for m in got) == sorted((i % 3, b"%d" % i) for i in range(9))


def test_a_record_the_producer_refuses_stops_the_flow_naming_why(settings):
    """Refused at ``produce`` (too large for the client). Failures the broker reports later, in delivery
    reports or a commit, are tested in tests/test_faults.py (``_undelivered_run``)."""
    conn = settings.connection()
    small = KafkaConnection(conn.brokers, {"message.max.bytes": "10000"})
    too_big = KafkaRecord(settings.decisions_topic, b"k", b"x" * 20_000)
    flow = Dataflow("sink_fail")
    kafka_output("out", op.input("in", flow, TestingSource([too_big])), small, [settings.decisions_topic])
    with pytest.raises(Exception) as info:
        run_main(flow)
    chain: list[BaseException] = []
    exc: BaseException | None = info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    text = " ".join(str(e) for e in chain).lower()
    assert "writing to kafka failed" in text and "too large" in text


def test_every_record_lands_in_its_partition_with_12_partitions_and_a_topic_name_that_prefixes_another(stack):
    """Bytewax routes by the sorted partition names: "t:10" sorts before "t:2", and "t-dlq:0" before "t:0"."""
    tag = uuid.uuid4().hex[:8]
    conn = KafkaConnection(stack.brokers)
    wide, short, prefixed = f"wide-{tag}", f"t-{tag}", f"t-{tag}-dlq"
    create_topics(conn, {wide: 12, short: 3, prefixed: 2})
    records = [KafkaRecord(wide, b"k", b"%d" % p, partition=p) for p in range(12)]
    records += [KafkaRecord(short, b"k", b"%d" % p, partition=p) for p in range(3)]
    records += [KafkaRecord(prefixed, b"k", b"%d" % p, partition=p) for p in range(2)]
    flow = Dataflow("sink_order")
    kafka_output("out", op.input("in", flow, TestingSource(records)), conn, [wide, short, prefixed])
    run_main(flow)
    for topic in (wide, short, prefixed):
        got = sorted((m.partition(), m.value()) for m in read_all(conn, topic))
        assert got == sorted((r.partition, r.value) for r in records if r.topic == topic), topic


def test_a_tools_producer_fails_when_kafka_refused_a_record_though_nothing_is_queued(settings):
    """flush() returning 0 says only that nothing is queued: a refused record is a failed delivery report."""
    from sluice.harness.loadgen import NotDelivered, send_open_loop

    producer = CheckedProducer(settings.connection().producer_config())
    refused = KafkaRecord(settings.transactions_topic, b"k", b"x", partition=99)  # the topic has 3 partitions
    # before the producer has the topic's metadata a record is queued, then refused by a delivery report;
    # after, produce() refuses it at once: the tool reports both the same way and sends the rest
    events = iter([lambda _ms: [refused], lambda _ms: [refused, KafkaRecord(settings.transactions_topic, b"k", b"ok")]])
    with pytest.raises(NotDelivered, match=r"2 records refused by Kafka; first: .*\[99\]: Local: Unknown partition"):
        send_open_loop(producer, events, rate=1000, count=2)
    assert len(read_all(settings.connection(), settings.transactions_topic, 5)) == 1  # the good record went out


def test_a_checked_producer_that_knows_the_topic_counts_a_record_it_cannot_queue_as_refused(settings):
    """With the topic's metadata in hand librdkafka refuses a bad partition in produce() itself."""
    from operators.kafka.sink import DeliveryFailed

    producer = CheckedProducer(settings.connection().producer_config())
    producer.produce(settings.transactions_topic, b"ok", b"k")
    producer.flush_or_raise(30)  # delivered: the producer now knows the topic has 3 partitions
    producer.produce(settings.transactions_topic, b"x", b"k", 99)  # refused at once, not raised
    with pytest.raises(DeliveryFailed, match=r"1 records refused by Kafka; first: .*\[99\]: Local: Unknown partition"):
        producer.flush_or_raise(30)


def test_partitioner_matches_librdkafkas_consistent_partitioner():
    part = Partitioner(lambda topic: {"a": 4, "b": 7}[topic])
    for key in (b"card-1", b"c0001234", b""):
        assert part(KafkaRecord("a", key, b""))[0] == f"a:{zlib.crc32(key) % 4}"
        assert part(KafkaRecord("b", key, b""))[0] == f"b:{zlib.crc32(key) % 7}"
    assert part(KafkaRecord("a", b"k", b"", partition=2))[0] == "a:2"


def test_transactional_sink_lists_one_part_per_topic_partition_and_rejects_strangers(settings):
    sink = TransactionalKafkaSink(settings.connection(), [settings.decisions_topic, settings.dlq_topic], "t")
    assert sink.list_parts() == sorted(
        [f"{settings.decisions_topic}:{p}" for p in range(3)] + [f"{settings.dlq_topic}:0"]
    )
    assert sink.part_fn(f"{settings.dlq_topic}:0") == sink.list_parts().index(f"{settings.dlq_topic}:0")
    with pytest.raises(ValueError, match="not a partition"):
        sink.part_fn("elsewhere:0")


def test_skip_list_drops_each_committed_id_once():
    skip = SkipList({b"tx/0/1", b"tx/0/2"})
    recs = [KafkaRecord("t", None, b"%d" % i, [(ID_HEADER, b"tx/0/%d" % i)]) for i in range(4)]
    assert [r.value for r in skip.fresh(recs)] == [b"0", b"3"]
    assert [r.value for r in skip.fresh(recs)] == [b"0", b"1", b"2", b"3"]  # skipped once, not forever
    no_id = KafkaRecord("t", None, b"x")
    assert skip.fresh([no_id]) == [no_id]


def test_resume_scan_finds_records_committed_after_the_checkpoint(settings):
    """A crash between the Kafka commit and the checkpoint: the resumed sink sees those ids."""
    conn = settings.connection()
    recs = [
        KafkaRecord(settings.decisions_topic, None, b"v", [(ID_HEADER, b"in/0/%d" % i)], partition=1) for i in range(5)
    ]
    _write(settings, recs, exactly_once=True, transactional_id_prefix="scan-test")
    ids, end = committed_ids(conn, settings.decisions_topic, 1, start=2)
    assert ids == {b"in/0/2", b"in/0/3", b"in/0/4"} and end == 6  # 5 records + the commit marker
    # writing the same inputs again through a fresh sink that resumes from offset 0 adds nothing
    _write(settings, recs, exactly_once=True, transactional_id_prefix="scan-test")
    assert len(read_all(conn, settings.decisions_topic)) == 5


def test_a_dropped_checked_producer_closes_at_once_not_at_a_garbage_collection():
    """No reference cycle through its delivery callback: dropping it stops librdkafka's threads right away
    (a tool's producer used to stay connected, and log "connection refused" after its stack stopped)."""

    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    gc.disable()
    try:
        before = threads()
        producer = CheckedProducer({"bootstrap.servers": "127.0.0.1:1"})
        assert threads() > before  # librdkafka's own threads
        del producer
        deadline = time.monotonic() + 10
        while threads() > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threads() <= before  # (fewer: another test's leftovers may have ended meanwhile)
    finally:
        gc.enable()
