"""limit-bytewax: the cheapest Bytewax flow on the same topics: decode, re-encode, write.

``python -m bytewax.run "perf.limit_bytewax:from_env()"``. It uses the same
source and sink as the fraud flow, so the gap between the two is the fraud
logic itself.
"""

from __future__ import annotations

import time

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow

from dataflows.runtime import flow_from_env
from operators.kafka.output import kafka_output
from operators.kafka.records import KafkaRecord, SourceRecord
from operators.kafka.source import KafkaPartitionSource
from sluice.settings import FraudSettings


def passthrough(rec: SourceRecord, topic: str) -> KafkaRecord:
    """Decode the event and write a minimal decision for it (same size class as the fraud output)."""
    event = orjson.loads(rec.value or b"{}")
    out = {
        "event_id": event.get("event_id"),
        "request_id": event.get("request_id"),  # when the input is a recommendation request (perf.personalize_bench)
        "decision": "approve",
        "sent_at": event.get("sent_at", event.get("time", 0.0)),
        "decided_at": time.time() * 1000.0,
    }
    return KafkaRecord(topic, rec.key, orjson.dumps(out))


def build_flow(settings: FraudSettings) -> Dataflow:
    flow = Dataflow("limit_bytewax")
    conn = settings.connection()
    src = KafkaPartitionSource(
        conn, [settings.transactions_topic], start=settings.start_from, batch_size=settings.source_batch_size
    )
    records = op.input("in", flow, src)
    out = op.map("passthrough", records, lambda r: passthrough(r, settings.decisions_topic))
    kafka_output("out", out, conn, [settings.decisions_topic])
    return flow


def from_env() -> Dataflow:
    return flow_from_env(FraudSettings, build_flow, redis=False)
