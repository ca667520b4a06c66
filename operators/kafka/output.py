"""The flows' Kafka output step: at-least-once by default, exactly-once on request."""

from __future__ import annotations

from collections.abc import Iterable

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from operators.kafka.admin import list_partitions
from operators.kafka.connection import KafkaConnection
from operators.kafka.records import KafkaRecord
from operators.kafka.sink import KafkaProducerSink, Partitioner
from operators.kafka.transactional import TransactionalKafkaSink


@operator
def kafka_output(
    step_id: str,
    up: Stream[KafkaRecord],
    connection: KafkaConnection,
    topics: Iterable[str],
    *,
    exactly_once: bool = False,
    transactional_id_prefix: str = "sluice",
    chained_topics: Iterable[str] = (),
) -> None:
    """Write records to ``topics`` (every record's topic must be one of them).

    Records without a partition go to ``crc32(key) % partitions``. At-least-once:
    nothing a checkpoint counted is lost (:mod:`operators.kafka.sink`).
    ``exactly_once``: one transaction per epoch, records need a ``sluice.id``
    header (:mod:`operators.kafka.transactional`). Records of ``chained_topics`` are
    hash-chained per partition as they are written (:mod:`state.hash_chain`).

    ```python
    kafka_output("out", decisions, settings.connection(), ["fraud-decisions", "dead-letters"])
    ```
    """
    topics = list(topics)
    routed = op.flat_map_batch("route", up, Partitioner(lambda topic: len(list_partitions(connection, topic))).batch)
    chained = list(chained_topics)
    if exactly_once:
        op.output("write", routed, TransactionalKafkaSink(connection, topics, transactional_id_prefix, chained))
    else:
        op.output("write", routed, KafkaProducerSink(connection, topics, chained_topics=chained))
