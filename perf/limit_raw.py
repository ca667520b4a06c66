"""limit-raw: consume -> decode -> produce in one process with confluent-kafka, no Bytewax.

``python -m perf.limit_raw`` (SLUICE_* settings). The ceiling any flow on this
broker and machine can reach.
"""

from __future__ import annotations

import signal
import sys

from confluent_kafka import Consumer, Producer, TopicPartition

from operators.kafka.admin import list_partitions
from operators.kafka.records import SourceRecord
from operators.kafka.sink import produce_all
from perf.limit_bytewax import passthrough
from sluice.harness.collector import poll_batch
from sluice.settings import FraudSettings


def main() -> int:
    settings = FraudSettings.from_env()
    conn = settings.connection()
    consumer = Consumer(
        conn.consumer_config(
            **{"group.id": "limit-raw", "enable.auto.commit": False, "isolation.level": "read_committed"}
        )
    )
    topic = settings.transactions_topic
    parts = list_partitions(conn, topic)
    consumer.assign(
        [TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p))[0]) for p in parts]
    )
    producer = Producer(conn.producer_config())
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
                SourceRecord(m.topic() or "", m.partition() or 0, m.offset() or 0, m.key(), m.value()),
                settings.decisions_topic,
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
