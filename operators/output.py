"""The flows' Kafka output step: at-least-once by default, exactly-once on request."""

from __future__ import annotations

import bytewax.operators as op
from bytewax.dataflow import Stream

from operators.kafka_records import KafkaRecord
from operators.kafka_sink import KafkaProducerSink
from sluice.settings import Settings


def kafka_output(step_id: str, up: Stream[KafkaRecord], settings: Settings) -> None:
    """Write records to Kafka with the sink ``settings`` asks for."""
    op.output(step_id, up, KafkaProducerSink(settings.kafka_config()))
