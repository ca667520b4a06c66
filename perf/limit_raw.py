"""limit-raw: consume -> decode -> produce in one process with confluent-kafka, no Bytewax.

``python -m perf.limit_raw`` (SLUICE_* settings). The ceiling any flow on this
broker and machine can reach.
"""

from __future__ import annotations

import signal
import sys

from confluent_kafka import Consumer, TopicPartition

from operators.kafka_records import SourceRecord
from operators.kafka_sink import LOW_LATENCY_PRODUCER, produce_all
from operators.kafka_source import list_partitions
from perf.limit_bytewax import passthrough
from sluice.collector import poll_batch
from sluice.settings import Settings


def main() -> int:
    settings = Settings.from_env()
    consumer = Consumer(
        settings.kafka_config(
            **{
                "group.id": "limit-raw",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 5,
                "isolation.level": "read_committed",
            }
        )
    )
    topic = settings.transactions_topic
    parts = list_partitions(settings.kafka_config(), topic)
    consumer.assign(
        [TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p))[0]) for p in parts]
    )
    from confluent_kafka import Producer

    producer = Producer(settings.kafka_config(**LOW_LATENCY_PRODUCER))
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while running:
        msgs = poll_batch(consumer, 0.05)
        out = [
            passthrough(
                SourceRecord(m.topic(), m.partition(), m.offset(), m.key(), m.value()), settings.decisions_topic
            )
            for m in msgs
            if m.error() is None
        ]
        if out:
            produce_all(producer, out)
        else:
            producer.poll(0)
    producer.flush(10)
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
