"""A Kafka sink on confluent-kafka that batches, checks delivery, and surfaces failures.

The bundled ``KafkaSink`` flushes on every batch (a round trip of latency per
batch), drops the partition and never checks delivery. This sink hands each
batch to librdkafka without waiting, serves delivery reports as they come, and
raises on the next batch (or at close) if any record failed, so a broken output
stops the flow instead of silently losing decisions. Delivery is at-least-once;
see :mod:`operators.exactly_once_sink` for the transactional variant.
"""

from __future__ import annotations

import logging
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from operators.kafka_records import KafkaRecord

log = logging.getLogger(__name__)

LOW_LATENCY_PRODUCER = {
    "linger.ms": 1,
    "enable.idempotence": True,
    "compression.type": "lz4",
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 500_000,
}


class DeliveryFailed(RuntimeError):
    """Kafka refused or lost records this sink produced."""


def produce_all(producer: Producer, records: list[KafkaRecord], on_delivery=None) -> None:  # type: ignore[no-untyped-def]
    """Produce ``records`` without waiting; waits for queue space when librdkafka's is full."""
    produce = producer.produce
    for rec in records:
        kwargs: dict[str, Any] = {"key": rec.key, "value": rec.value, "headers": rec.headers or None}
        if rec.partition is not None:
            kwargs["partition"] = rec.partition
        if on_delivery is not None:
            kwargs["on_delivery"] = on_delivery
        while True:
            try:
                produce(rec.topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.05)
    producer.poll(0)


class _ProducerPartition(StatelessSinkPartition[KafkaRecord]):
    def __init__(self, config: dict[str, object], flush_timeout_s: float) -> None:
        self._producer = Producer(config)
        self._flush_timeout_s = flush_timeout_s
        self._errors: list[str] = []
        self.delivered = 0

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err.str()}")
        else:
            self.delivered += 1

    def _raise_if_failed(self) -> None:
        if self._errors:
            count, first = len(self._errors), self._errors[0]
            self._errors.clear()
            raise DeliveryFailed(f"{count} record(s) were not delivered; first: {first}")

    def write_batch(self, items: list[KafkaRecord]) -> None:
        self._raise_if_failed()
        try:
            produce_all(self._producer, items, self._on_delivery)
        except KafkaException as exc:
            raise DeliveryFailed(str(exc)) from exc

    def close(self) -> None:
        remaining = self._producer.flush(self._flush_timeout_s)
        if remaining:
            raise DeliveryFailed(f"{remaining} record(s) still undelivered after {self._flush_timeout_s}s")
        self._raise_if_failed()


class KafkaProducerSink(DynamicSink[KafkaRecord]):
    """Write :class:`KafkaRecord` items to Kafka, at least once, without a flush per batch.

    >>> sink = KafkaProducerSink({"bootstrap.servers": "127.0.0.1:9092"})
    """

    def __init__(self, config: dict[str, object], flush_timeout_s: float = 30.0) -> None:
        self._config = {**LOW_LATENCY_PRODUCER, **config}
        self._flush_timeout_s = flush_timeout_s

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProducerPartition:
        return _ProducerPartition(dict(self._config), self._flush_timeout_s)
