"""Fraud detection: card transactions in, ``approve | review | decline`` out, within milliseconds.

    python -m bytewax.run "dataflows.fraud:from_env()"                      # one worker
    python -m bytewax.run "dataflows.fraud:from_env()" -r .recovery -s 1 -b 0   # recoverable
    sluice run fraud -- -r .recovery -s 1 -b 0                              # the same

transactions -> parse (bad -> DLQ) -> key by card -> sliding window features
(late -> DLQ) -> Redis profiles (batched, cached) -> micro-batched model ->
rules -> fraud-decisions. Configuration comes from ``SLUICE_*`` variables
(:class:`sluice.settings.FraudSettings`); the flow is built by :func:`from_env`
(importing this module loads no model).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow, Stream

from dataflows.runtime import flow_from_env
from models.fraud_features import HIGH_RISK_COUNTRIES, RISKY_CATEGORIES, feature_matrix, feature_row, local_hour
from models.fraud_model import FraudScorer, load_scorer
from models.transaction import Transaction, parse_transaction
from operators.dead_letter import DeadLetter, parse_or_dead_letter
from operators.enrich import enrich_batch
from operators.event_windows import Features, WindowSpec, sliding_features
from operators.kafka.output import kafka_output
from operators.kafka.records import KafkaRecord, SourceRecord
from operators.kafka.source import KafkaPartitionSource
from operators.microbatch import micro_batch
from sluice.settings import FraudSettings
from state.feature_store import FeatureStore, Profile


@dataclass(frozen=True, slots=True)
class CardEvent:
    """A parsed transaction and the record it came from (its bytes and position)."""

    source: SourceRecord
    txn: Transaction


@dataclass(frozen=True, slots=True)
class EnrichedEvent:
    """What the model step gets: the event, its window features and the card's profile."""

    event: CardEvent
    features: Features
    profile: Profile | None
    store_down: bool


@dataclass(frozen=True)
class Policy:
    """Score thresholds and the rules that can raise a decision to review."""

    decline_at: float = 0.9
    review_at: float = 0.5
    review_with_rule_at: float = 0.2
    velocity_1m: int = 5
    amount_multiple: float = 8.0

    def rules(self, txn: Transaction, feats: Features, profile: Profile | None) -> list[str]:
        """Names of the rules this event breaks."""
        fired = []
        home = profile.get("home_country", txn.country) if profile else txn.country
        if feats[0] >= self.velocity_1m:
            fired.append("velocity_burst")
        if profile and txn.amount >= self.amount_multiple * float(profile.get("avg_amount", "inf")):
            fired.append("amount_far_above_usual")
        if txn.country != home and txn.country in HIGH_RISK_COUNTRIES:
            fired.append("high_risk_country")
        if txn.merchant_category in RISKY_CATEGORIES and 0 <= local_hour(txn.event_time_ms, home) < 5:
            fired.append("risky_category_at_night")
        return fired

    def decide(self, score: float, rules: Sequence[str]) -> str:
        if score >= self.decline_at:
            return "decline"
        if score >= self.review_at or (rules and score >= self.review_with_rule_at):
            return "review"
        return "approve"


@functools.cache
def _scorer(model_path: str, device: str) -> FraudScorer:
    return load_scorer(model_path, device)


def score_batch(items: list[EnrichedEvent], settings: FraudSettings, policy: Policy) -> list[KafkaRecord]:
    """Score a micro-batch with one model call and turn each result into a decision record."""
    scorer = _scorer(settings.model_path, settings.device)
    rows = [feature_row(e.event.txn, e.features, e.profile) for e in items]
    scores = scorer.score(feature_matrix(rows))
    decided_ms = time.time() * 1000.0
    processed_at = str(int(decided_ms)).encode()
    out = []
    for item, score in zip(items, scores.tolist(), strict=True):
        txn, feats, profile = item.event.txn, item.features, item.profile
        rules = policy.rules(txn, feats, profile)
        decision = {
            "event_id": txn.event_id,
            "card_id": txn.card_id,
            "decision": policy.decide(score, rules),
            "score": round(score, 4),
            "rules": rules,
            "model_version": scorer.version,
            "profile_fallback": profile is None,
            "feature_store_down": item.store_down,
            "features": {
                "count_1m": feats[0],
                "count_1h": feats[2],
                "distinct_1h": feats[4],
                "secs_since_prev": feats[5],
            },
            "event_time": txn.event_time_ms,
            "sent_at": txn.sent_at_ms,
            "decided_at": decided_ms,
        }
        out.append(
            KafkaRecord(
                topic=settings.decisions_topic,
                key=txn.card_id.encode(),
                value=orjson.dumps(decision),
                headers=[
                    *item.event.source.position.headers(),
                    ("event.id", txn.event_id.encode()),
                    ("event.time", str(txn.event_time_ms).encode()),
                    ("processed.at", processed_at),
                ],
            )
        )
    return out


def _card_event(parsed: tuple[SourceRecord, Transaction]) -> tuple[str, CardEvent]:
    src, txn = parsed
    return txn.card_id, CardEvent(src, txn)


def _enriched(item: tuple[str, tuple[CardEvent, Features]], profile: Profile | None, down: bool) -> EnrichedEvent:
    event, feats = item[1]
    return EnrichedEvent(event, feats, profile, down)


def _late_letter(item: tuple[str, CardEvent]) -> DeadLetter:
    reason = "late event: older than the card's newest event minus the allowed lateness"
    return DeadLetter(reason, "window", item[1].source)


def build_flow(settings: FraudSettings, policy: Policy = Policy(), name: str = "fraud") -> Dataflow:
    """The fraud dataflow for ``settings`` (see the module docstring)."""
    _scorer(settings.model_path, settings.device)  # load now: a missing model fails at start, not mid-stream
    conn = settings.connection()
    flow = Dataflow(name)
    source = KafkaPartitionSource(
        conn,
        [settings.transactions_topic],
        start=settings.start_from,
        tail=not settings.stop_at_end,
        batch_size=settings.source_batch_size,
    )
    records: Stream[SourceRecord] = op.input("transactions", flow, source)
    parsed = parse_or_dead_letter("parse", records, parse_transaction)
    windows = sliding_features(
        "window",
        op.map("by_card", parsed.ok, _card_event),
        ts_getter=lambda ev: ev.txn.event_time_s,
        value_getter=lambda ev: ev.txn.amount,
        tag_getter=lambda ev: ev.txn.merchant_id,
        spec=WindowSpec(allowed_lateness_s=settings.allowed_lateness_s),
        idle_timeout=timedelta(seconds=settings.card_idle_timeout_s),
    )
    enriched = enrich_batch(
        "profiles",
        windows.down,
        lambda: FeatureStore(settings.redis_url, "card", ttl_s=settings.profile_cache_ttl_s).get_many,
        lambda kv: kv[0],
        _enriched,
    )
    decisions = micro_batch(
        "score",
        enriched,
        functools.partial(score_batch, settings=settings, policy=policy),
        shard_key=lambda e: e.event.txn.card_id,
        max_batch=settings.max_batch,
        max_wait=timedelta(milliseconds=settings.max_wait_ms),
        shards=settings.inference_shards,
    )
    dead = op.merge("dead", parsed.dead, op.map("late_letters", windows.late, _late_letter))
    dead_records = op.map("dlq_records", dead, lambda d: d.to_record(settings.dlq_topic))
    kafka_output(
        "out",
        op.merge("all_out", decisions, dead_records),
        conn,
        settings.output_topics(),
        exactly_once=settings.exactly_once,
        transactional_id_prefix=settings.transactional_id_prefix,
    )
    return flow


def from_env() -> Dataflow:
    """The flow ``SLUICE_*`` variables describe, after checking Kafka, the topics, Redis and the device."""
    return flow_from_env(FraudSettings, build_flow, redis=True)
