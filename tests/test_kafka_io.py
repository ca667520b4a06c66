import time

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from operators.kafka_records import KafkaRecord
from operators.kafka_sink import DeliveryFailed, KafkaProducerSink
from operators.kafka_source import KafkaPartitionSource, StartAt
from sluice.collector import read_all
from tests.helpers import produce


def _read_source(settings, start):
    flow = Dataflow("src")
    src = KafkaPartitionSource(settings.brokers, [settings.transactions_topic], start=start, tail=False)
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


def test_start_position_errors_are_clear():
    with pytest.raises(ValueError, match="earliest|latest"):
        StartAt.parse("yesterday")


def test_sink_delivers_with_keys_and_headers(settings):
    recs = [
        KafkaRecord(settings.decisions_topic, f"k{i}".encode(), f"v{i}".encode(), [("h", b"%d" % i)])
        for i in range(100)
    ]
    flow = Dataflow("sink")
    op.output("o", op.input("in", flow, TestingSource(recs, batch_size=7)), KafkaProducerSink(settings.kafka_config()))
    run_main(flow)
    got = read_all(settings.brokers, settings.decisions_topic)
    assert sorted((m.key(), m.value(), m.headers()[0][1]) for m in got) == sorted(
        (r.key, r.value, r.headers[0][1]) for r in recs
    )


def test_sink_surfaces_failed_delivery(settings):
    too_big = KafkaRecord(settings.decisions_topic, b"k", b"x" * 20_000)
    flow = Dataflow("sink_fail")
    op.output(
        "o",
        op.input("in", flow, TestingSource([too_big])),
        KafkaProducerSink(settings.kafka_config(**{"message.max.bytes": 10_000})),
    )
    with pytest.raises(Exception) as info:
        run_main(flow)
    chain: list[BaseException] = []
    exc: BaseException | None = info.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    failed = [e for e in chain if isinstance(e, DeliveryFailed)]
    assert failed and "too large" in str(failed[0]).lower()


def test_partition_is_respected(settings):
    recs = [KafkaRecord(settings.decisions_topic, b"same-key", b"%d" % i, partition=i % 3) for i in range(9)]
    sink_part = KafkaProducerSink(settings.kafka_config()).build("s", 0, 1)
    sink_part.write_batch(recs)
    sink_part.close()
    got = read_all(settings.brokers, settings.decisions_topic)
    assert sorted((m.partition(), m.value()) for m in got) == sorted((i % 3, b"%d" % i) for i in range(9))
