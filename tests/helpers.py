"""Helpers for tests that talk to the real broker and run real flow processes."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
from confluent_kafka import Producer

from models.transaction import Transaction
from sluice.collector import read_all
from sluice.flowproc import FlowProcesses
from sluice.generator import START_MS, encode
from sluice.settings import FlowSettings, Settings


def txn(
    event_id: str,
    card: str,
    amount: float,
    *,
    t_s: float,
    country: str = "US",
    category: str = "grocery",
    merchant: str = "m1",
) -> Transaction:
    return Transaction(event_id, card, amount, "USD", merchant, category, country, START_MS + int(t_s * 1000), 0.0)


def produce(settings: FlowSettings, values: list[tuple[bytes, bytes]], topic: str | None = None) -> None:
    """Produce ``(key, value)`` pairs to ``topic`` (default: the fraud flow's transactions) and wait for them."""
    if topic is None:
        assert isinstance(settings, Settings), "name the topic for flows other than fraud"
        topic = settings.transactions_topic
    producer = Producer(settings.kafka_config(**{"enable.idempotence": True}))
    for key, value in values:
        producer.produce(topic, key=key, value=value)
    assert producer.flush(30) == 0


def produce_txns(settings: Settings, txns: list[Transaction]) -> None:
    now = time.time() * 1000
    produce(settings, [(t.card_id.encode(), encode(t, now)) for t in txns])


def wait_for(settings: Settings, topic: str, count: int, timeout_s: float = 60) -> list:  # type: ignore[type-arg]
    """Read ``topic`` until it holds at least ``count`` messages."""
    deadline = time.monotonic() + timeout_s
    while True:
        msgs = read_all(settings.brokers, topic)
        if len(msgs) >= count or time.monotonic() > deadline:
            return msgs
        time.sleep(0.3)


def decisions(msgs: list) -> dict[str, list[dict]]:  # type: ignore[type-arg]
    out: dict[str, list[dict]] = {}
    for m in msgs:
        d = orjson.loads(m.value())
        out.setdefault(d["event_id"], []).append(d)
    return out


def start_flow(settings: Settings, log_dir: Path, extra_env: dict[str, str] | None = None, **kwargs) -> FlowProcesses:  # type: ignore[no-untyped-def]
    env = {**settings.to_env(), **(extra_env or {})}
    return FlowProcesses("dataflows.fraud:flow", env, log_dir=log_dir, **kwargs).start()
