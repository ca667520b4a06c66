"""Helpers for tests that talk to the real broker and run real flow processes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Message, Producer

from models.synthetic_transactions import START_MS
from models.transaction import Transaction
from operators.kafka.admin import create_topics, read_all
from sluice.local.stack import LocalStack
from sluice.processes import FlowProcesses
from sluice.settings import FlowSettings, FraudSettings
from state.checkpoints import summarize

FRAUD_FLOW = "dataflows.fraud:from_env()"


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


def produce(
    settings: FlowSettings,
    values: Sequence[tuple[bytes | None, bytes | None]],
    topic: str | None = None,
    headers: list[tuple[str, str | bytes | None]] | None = None,
) -> None:
    """Produce ``(key, value)`` pairs (each with ``headers``) to ``topic`` (default: the fraud flow's
    transactions) and wait for them."""
    if topic is None:
        assert isinstance(settings, FraudSettings), "name the topic for flows other than fraud"
        topic = settings.transactions_topic
    producer = Producer(settings.connection().producer_config(**{"message.max.bytes": 10_000_000}))
    for key, value in values:
        producer.produce(topic, key=key, value=value, headers=headers)
    assert producer.flush(30) == 0


def produce_txns(settings: FraudSettings, txns: list[Transaction]) -> None:
    now = time.time() * 1000
    produce(settings, [(t.card_id.encode(), t.to_json(sent_at_ms=now)) for t in txns])


def wait_for(settings: FlowSettings, topic: str, count: int, timeout_s: float = 60) -> list[Message]:
    """Read ``topic`` until it holds at least ``count`` messages."""
    deadline = time.monotonic() + timeout_s
    while True:
        msgs = read_all(settings.connection(), topic)
        if len(msgs) >= count or time.monotonic() > deadline:
            return msgs
        time.sleep(0.3)


def export_settings(monkeypatch: pytest.MonkeyPatch, settings: FlowSettings) -> None:
    """Put ``settings`` in the environment (``SLUICE_*``), where the ``sluice`` command reads them."""
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)


def wait_for_checkpoints(recovery_dir: Path, epochs: int = 1, timeout_s: float = 60) -> None:
    """Wait until the recovery store has committed ``epochs`` more epochs than it had on the call: what the flow
    had done by then is in a checkpoint."""
    seen = summarize(recovery_dir).committed_epoch or 0
    deadline = time.monotonic() + timeout_s
    while (summarize(recovery_dir).committed_epoch or 0) < seen + epochs:
        assert time.monotonic() < deadline, f"no {epochs} more checkpoints in {recovery_dir} within {timeout_s} s"
        time.sleep(0.2)


def decisions(msgs: list[Message]) -> dict[str, list[dict[str, Any]]]:
    """Decisions by event id (readiness probes left out)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for m in msgs:
        d = orjson.loads(m.value() or b"{}")
        if not d["event_id"].startswith("probe-"):
            out.setdefault(d["event_id"], []).append(d)
    return out


def wait_for_decisions(settings: FraudSettings, count: int, timeout_s: float = 60) -> dict[str, list[dict[str, Any]]]:
    """Read the decisions topic until ``count`` distinct events (probes left out) are decided."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = decisions(read_all(settings.connection(), settings.decisions_topic))
        if len(got) >= count or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


def start_flow(
    settings: FlowSettings,
    log_dir: Path,
    extra_env: dict[str, str] | None = None,
    flow: str = FRAUD_FLOW,
    **kwargs: Any,
) -> FlowProcesses:
    env = {**settings.to_env(), **(extra_env or {})}
    return FlowProcesses(flow, env, log_dir=log_dir, **kwargs).start()


def fraud_settings(stack: LocalStack, model_dir: Path, **overrides: Any) -> FraudSettings:
    """Fraud settings on the test stack with topics of their own (created), the test model and ``overrides``."""
    tag = uuid.uuid4().hex[:8]
    s = replace(
        FraudSettings(),
        brokers=stack.brokers,
        redis_url=stack.redis_url,
        transactions_topic=f"tx-{tag}",
        decisions_topic=f"decisions-{tag}",
        dlq_topic=f"dlq-{tag}",
        labels_topic=f"labels-{tag}",
        alarms_topic=f"alarms-{tag}",
        features_topic=f"features-{tag}",
        shadow_topic=f"shadow-{tag}",
        rationales_topic=f"rationales-{tag}",
        model_path=str(model_dir),
        topic_partitions=3,
    )
    s = replace(s, **overrides)
    create_topics(s.connection(), s.topics())
    return s


class PlacementSink(DynamicSink[Any]):
    """Records which worker wrote each item, as ``where[name_of(item)] = worker index``: after a keyed step, an
    item is written on the worker that ran its key's logic."""

    def __init__(self, name_of: Callable[[Any], str]) -> None:
        self.name_of = name_of
        self.where: dict[str, int] = {}

    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[Any]:
        where, name_of = self.where, self.name_of

        class Part(StatelessSinkPartition[Any]):
            def write_batch(self, items: list[Any]) -> None:
                where.update((name_of(item), worker_index) for item in items)

        return Part()
