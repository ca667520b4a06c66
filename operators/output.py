"""The flows' Kafka output step: at-least-once by default, exactly-once on request."""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Stream

from operators.exactly_once_sink import exactly_once_output
from operators.kafka_records import KafkaRecord
from operators.kafka_sink import KafkaProducerSink
from sluice.settings import FlowSettings


def kafka_output(step_id: str, up: Stream[KafkaRecord], settings: FlowSettings, topics: list[str]) -> None:
    """Write records to ``topics``: transactionally when ``settings.exactly_once``, else at least once."""
    if settings.exactly_once:
        exactly_once_output(step_id, up, settings.kafka_config(), topics, settings.transactional_id_prefix)
    else:
        op.output(step_id, up, KafkaProducerSink(settings.kafka_config()))
