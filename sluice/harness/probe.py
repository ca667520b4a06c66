"""Readiness by probe: send one event and wait for the flow's answer to it.

A flow is ready when it answers, not when its process exists: model loading,
partition assignment and the first fetch all happen after start. Demos and
benchmarks wait here before they start their clocks.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
from confluent_kafka import Producer, TopicPartition

from operators.kafka.admin import end_offset, list_partitions, reader
from operators.kafka.connection import KafkaConnection
from operators.kafka.records import KafkaRecord
from operators.kafka.sink import produce_all


def wait_for_answer(
    conn: KafkaConnection,
    probe: KafkaRecord,
    answer_topic: str,
    is_answer: Callable[[dict[str, object]], bool],
    alive: Callable[[], bool],
    timeout_s: float = 120.0,
) -> float:
    """Produce ``probe`` and wait until a record on ``answer_topic`` satisfies ``is_answer``;
    returns the seconds it took. Raises if ``alive()`` turns false or the time runs out."""
    consumer = reader(conn, "sluice-probe", **{"enable.partition.eof": True})
    parts = list_partitions(conn, answer_topic)
    ends = [end_offset(consumer, answer_topic, p) for p in parts]
    consumer.assign([TopicPartition(answer_topic, p, o) for p, o in zip(parts, ends, strict=True)])
    producer = Producer(conn.producer_config())
    produce_all(producer, [probe])
    producer.flush(10)
    started = time.monotonic()
    try:
        while time.monotonic() - started < timeout_s:
            if not alive():
                raise RuntimeError("the flow exited during start-up; see its logs")
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            try:
                body = orjson.loads(msg.value() or b"{}")
            except orjson.JSONDecodeError:
                continue
            if isinstance(body, dict) and is_answer(body):
                return time.monotonic() - started
        raise TimeoutError(f"no answer to the probe on {answer_topic} within {timeout_s:.0f}s")
    finally:
        consumer.close()
