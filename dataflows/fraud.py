"""Fraud detection: card transactions in, ``approve | review | decline`` out, within milliseconds.

    python -m bytewax.run "dataflows.fraud:from_env()"                      # one worker
    python -m bytewax.run "dataflows.fraud:from_env()" -r .recovery -s 1 -b 0   # recoverable
    sluice run fraud -- -r .recovery -s 1 -b 0                              # the same

transactions -> parse (bad -> DLQ) -> key by card -> sliding window features
(duplicate ids -> DLQ; late and far-future events decided from the window without
moving it, the latter also copied to the DLQ) -> Redis profiles (batched, cached,
validated) -> micro-batched model -> rules -> fraud-decisions. Every decision
lists in ``flags`` what it was made without (profile, store, in-order time). Configuration comes from ``SLUICE_*`` variables
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
from models.fraud_features import (
    HIGH_RISK_COUNTRIES,
    RISKY_CATEGORIES,
    CardProfile,
    feature_matrix,
    feature_row,
    local_hour,
    parse_profile,
)
from models.fraud_model import FraudScorer, load_scorer
from models.transaction import Transaction, parse_transaction
from operators.dead_letter import DeadLetter, parse_or_dead_letter
from operators.enrich import FetchMany, enrich_batch
from operators.event_windows import Features, Windowed, WindowSpec, WindowStatus, sliding_features
from operators.kafka.output import kafka_output
from operators.kafka.records import KafkaRecord, SourceRecord
from operators.kafka.source import KafkaPartitionSource
from operators.microbatch import micro_batch
from sluice.settings import FraudSettings
from state.feature_store import FeatureStore, Unreadable


@dataclass(frozen=True, slots=True)
class CardEvent:
    """A parsed transaction and the record it came from (its bytes and position)."""

    source: SourceRecord
    txn: Transaction


@dataclass(frozen=True, slots=True)
class EnrichedEvent:
    """What the model step gets: the event, its window features and status, and the card's profile."""

    event: CardEvent
    features: Features
    status: WindowStatus
    profile: CardProfile | None
    profile_problem: str | None  # why a profile that exists could not be used
    store_down: bool

    def flags(self) -> list[str]:
        """Why this decision was made with less than the full picture (empty when it was not)."""
        out = []
        if self.status is not WindowStatus.OK:
            out.append(f"event_{self.status.value}")
        if self.store_down:
            out.append("feature_store_down")
        elif self.profile_problem is not None:
            out.append("profile_invalid")
        elif self.profile is None:
            out.append("profile_missing")
        return out


@dataclass(frozen=True)
class Policy:
    """Score thresholds and the rules that can raise a decision to review."""

    decline_at: float = 0.9
    review_at: float = 0.5
    review_with_rule_at: float = 0.2
    velocity_1m: int = 5
    amount_multiple: float = 8.0

    def rules(self, txn: Transaction, feats: Features, profile: CardProfile | None) -> list[str]:
        """Names of the rules this event breaks."""
        fired = []
        home = (profile.home_country if profile else None) or txn.country
        if feats[0] >= self.velocity_1m:
            fired.append("velocity_burst")
        if profile and txn.amount >= self.amount_multiple * profile.avg_amount:
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
            "flags": item.flags(),
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
            # what the review chain (dataflows/review.py) needs to pick a chain without the transaction
            "amount": txn.amount,
            "country": txn.country,
            "merchant_category": txn.merchant_category,
        }
        if item.profile_problem is not None:
            decision["profile_problem"] = item.profile_problem
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


def profile_reader(settings: FraudSettings) -> FetchMany[str, CardProfile | Unreadable | None]:
    """Batched, cached, validated card-profile reads (built on the worker, never pickled)."""
    store: FeatureStore[CardProfile] = FeatureStore(
        settings.redis_url,
        "card",
        ttl_s=settings.profile_cache_ttl_s,
        socket_timeout_s=settings.redis_timeout_ms / 1000.0,
        parse=parse_profile,
    )
    return store.get_many


def _card_of(item: tuple[str, Windowed[CardEvent]]) -> str:
    return item[0]


def _card_event(parsed: tuple[SourceRecord, Transaction]) -> tuple[str, CardEvent]:
    src, txn = parsed
    return txn.card_id, CardEvent(src, txn)


def _enriched(
    item: tuple[str, Windowed[CardEvent]], lookup: CardProfile | Unreadable | None, down: bool
) -> EnrichedEvent:
    w = item[1]
    assert w.features is not None, "duplicates are not scored"
    if isinstance(lookup, Unreadable):
        return EnrichedEvent(w.event, w.features, w.status, None, lookup.reason, False)
    # "store down" only for the events it left without a profile: cached profiles still served
    return EnrichedEvent(w.event, w.features, w.status, lookup, None, down and lookup is None)


def _is_duplicate(item: tuple[str, Windowed[CardEvent]]) -> bool:
    return item[1].status is WindowStatus.DUPLICATE


def _is_ahead(item: tuple[str, Windowed[CardEvent]]) -> bool:
    return item[1].status is WindowStatus.AHEAD


def _window_letter(item: tuple[str, Windowed[CardEvent]]) -> DeadLetter:
    """Duplicates (not decided again) and events dated too far ahead (decided, kept for inspection)."""
    w = item[1]
    if w.status is WindowStatus.DUPLICATE:
        reason = f"duplicate event id {w.event.txn.event_id!r}: this card already has a decision for it"
    else:
        reason = "event time too far ahead of the clock: decided without moving the card's window"
    return DeadLetter(reason, "window", w.event.source)


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
        give_up_after_s=settings.outage_timeout_s,
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
        id_getter=lambda ev: ev.txn.event_id,
        max_ahead=timedelta(seconds=settings.max_event_ahead_s),
    )
    split = op.branch("duplicates", windows, _is_duplicate)
    enriched: Stream[EnrichedEvent] = enrich_batch(
        "profiles", split.falses, functools.partial(profile_reader, settings), _card_of, _enriched
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
    for_inspection = op.merge("window_letters", split.trues, op.filter("ahead", split.falses, _is_ahead))
    dead = op.merge("dead", parsed.dead, op.map("window_dead", for_inspection, _window_letter))
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
