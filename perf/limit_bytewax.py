"""limit-bytewax: the cheapest Bytewax flow on the same topics: decode, re-encode, write.

``python -m bytewax.run perf.limit_bytewax:flow``. It uses the same source and
sink as the fraud flow, so the gap between the two is the fraud logic itself.
"""

from __future__ import annotations

import time

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow

from operators.kafka_records import KafkaRecord, SourceRecord
from operators.kafka_sink import KafkaProducerSink
from operators.kafka_source import KafkaPartitionSource
from sluice.settings import Settings


def passthrough(rec: SourceRecord, topic: str) -> KafkaRecord:
    """Decode the event and write a minimal decision for it (same size class as the fraud output)."""
    event = orjson.loads(rec.value or b"{}")
    out = {
        "event_id": event.get("event_id"),
        "decision": "approve",
        "sent_at": event.get("sent_at", 0.0),
        "decided_at": time.time() * 1000.0,
    }
    return KafkaRecord(topic, rec.key, orjson.dumps(out))


def build_flow(settings: Settings) -> Dataflow:
    flow = Dataflow("limit_bytewax")
    src = KafkaPartitionSource(
        settings.brokers,
        [settings.transactions_topic],
        start=settings.start_from,
        batch_size=settings.source_batch_size,
        config=settings.kafka,
    )
    records = op.input("in", flow, src)
    out = op.map("passthrough", records, lambda r: passthrough(r, settings.decisions_topic))
    op.output("out", out, KafkaProducerSink(settings.kafka_config()))
    return flow


flow = build_flow(Settings.from_env())
