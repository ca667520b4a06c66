"""Fraud detection: card transactions in, ``approve | review | decline`` out, within milliseconds.

    python -m bytewax.run dataflows.fraud:flow            # one worker
    python -m bytewax.run dataflows.fraud:flow -r .recovery -s 1 -b 0   # recoverable

transactions -> parse (bad -> DLQ) -> key by card -> sliding window features
(late -> DLQ) -> Redis profiles (batched, cached) -> micro-batched model ->
rules -> fraud-decisions. Configuration comes from ``SLUICE_*`` variables
(:class:`sluice.settings.Settings`).
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

from models.fraud_features import HIGH_RISK_COUNTRIES, RISKY_CATEGORIES, feature_matrix, feature_row, local_hour
from models.fraud_model import FraudScorer, load_scorer
from models.transaction import Transaction, parse_transaction
from operators.dead_letter import DeadLetter, parse_or_dead_letter
from operators.event_windows import Features, WindowSpec, sliding_features
from operators.kafka_records import ID_HEADER, KafkaRecord, SourceRecord, position_id
from operators.kafka_source import KafkaPartitionSource
from operators.lookup import lookup_profiles
from operators.microbatch import micro_batch
from operators.output import kafka_output
from sluice.settings import Settings
from sluice.tuning import tune_gc
from state.feature_store import FeatureStore, Profile

Position = tuple[str, int, int]  # source topic, partition, offset
# (card, ((transaction, position), window features)), profile, feature store unreachable
Scored = tuple[tuple[str, tuple[tuple[Transaction, Position], Features]], "Profile | None", bool]


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


def score_batch(items: list[Scored], settings: Settings, policy: Policy) -> list[KafkaRecord]:
    """Score a micro-batch with one model call and turn each result into a decision record."""
    scorer = _scorer(settings.model_path, settings.device)
    unpacked = [(txn, pos, feats, profile, down) for (_, ((txn, pos), feats)), profile, down in items]
    rows = [feature_row(txn, feats, profile) for txn, _, feats, profile, _ in unpacked]
    scores = scorer.score(feature_matrix(rows))
    decided_ms = time.time() * 1000.0
    out = []
    for (txn, pos, feats, profile, redis_down), score in zip(unpacked, scores.tolist(), strict=True):
        rules = policy.rules(txn, feats, profile)
        decision = {
            "event_id": txn.event_id,
            "card_id": txn.card_id,
            "decision": policy.decide(score, rules),
            "score": round(score, 4),
            "rules": rules,
            "model_version": scorer.version,
            "profile_fallback": profile is None,
            "feature_store_down": redis_down,
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
        topic, partition, offset = pos
        out.append(
            KafkaRecord(
                topic=settings.decisions_topic,
                key=txn.card_id.encode(),
                value=orjson.dumps(decision),
                headers=[
                    (ID_HEADER, position_id(topic, partition, offset)),
                    ("event.id", txn.event_id.encode()),
                    ("source.topic", topic.encode()),
                    ("source.partition", str(partition).encode()),
                    ("source.offset", str(offset).encode()),
                    ("event.time", str(txn.event_time_ms).encode()),
                    ("processed.at", str(int(decided_ms)).encode()),
                ],
            )
        )
    return out


def build_flow(settings: Settings, policy: Policy = Policy(), name: str = "fraud") -> Dataflow:
    """The fraud dataflow for ``settings`` (see the module docstring)."""
    _scorer(settings.model_path, settings.device)  # load now: a missing model fails at start, not mid-stream
    tune_gc()
    flow = Dataflow(name)
    source = KafkaPartitionSource(
        settings.brokers,
        [settings.transactions_topic],
        start=settings.start_from,
        tail=not settings.stop_at_end,
        batch_size=settings.source_batch_size,
        config=settings.kafka,
    )
    records: Stream[SourceRecord] = op.input("transactions", flow, source)
    parsed = parse_or_dead_letter("parse", records, parse_transaction)
    keyed = op.map(
        "by_card", parsed.ok, lambda rt: (rt[1].card_id, (rt[1], (rt[0].topic, rt[0].partition, rt[0].offset)))
    )
    windows = sliding_features(
        "window",
        keyed,
        ts_getter=lambda ev: ev[0].event_time_s,
        value_getter=lambda ev: ev[0].amount,
        tag_getter=lambda ev: ev[0].merchant_id,
        spec=WindowSpec(allowed_lateness_s=settings.allowed_lateness_s),
        idle_timeout=timedelta(seconds=settings.card_idle_timeout_s),
    )
    enriched = lookup_profiles(
        "profiles",
        windows.down,
        lambda: FeatureStore(settings.redis_url, "card", ttl_s=settings.profile_cache_ttl_s),
        lambda kv: kv[0],
    )
    decisions = micro_batch(
        "score",
        enriched,
        functools.partial(score_batch, settings=settings, policy=policy),
        shard_key=lambda item: item[0][0],
        max_batch=settings.max_batch,
        max_wait=timedelta(milliseconds=settings.max_wait_ms),
        shards=settings.inference_shards,
    )
    late = op.map("late_letters", windows.late, lambda kv: _late_letter(kv[1]))
    dead = op.merge("dead", parsed.dead, late)
    dead_records = op.map("dlq_records", dead, lambda d: d.to_record(settings.dlq_topic))
    kafka_output(
        "out", op.merge("all_out", decisions, dead_records), settings, [settings.decisions_topic, settings.dlq_topic]
    )
    return flow


def _late_letter(event: tuple[Transaction, Position]) -> DeadLetter:
    txn, (topic, partition, offset) = event
    source = SourceRecord(topic, partition, offset, txn.card_id.encode(), txn.to_json())
    return DeadLetter("late event: older than the card's newest event minus the allowed lateness", "window", source)


flow = build_flow(Settings.from_env())
