"""Fraud detection: card transactions in, ``approve | review | decline`` out, within milliseconds.

    python -m bytewax.run "dataflows.fraud:from_env()"                      # one worker
    python -m bytewax.run "dataflows.fraud:from_env()" -r .recovery -s 1 -b 0   # recoverable
    sluice run fraud -- -r .recovery -s 1 -b 0                              # the same

transactions -> parse (bad -> DLQ) -> key by card -> sliding window features and
the card's last 32 events (duplicate ids -> DLQ; late and far-future events
decided from the window without moving it, the latter also copied to the DLQ)
-> Redis profiles (batched, cached, validated) -> **stage 1**: trees (or the
MLP) score every event -> route: events in the uncertain band or with a fired
rule go to **stage 2**, a GRU over the card's recent events; the rest are final
-> rules and thresholds -> fraud-decisions, plus the feature log (the exact
inputs of every decision) -> **stage 3**, off the decision path: a note for the
analyst for every review and large decline (fraud-rationales).

Models come from the registry (:mod:`models.registry`): each shard of stage 1
pins the served version and looks for a newly promoted one at checkpoints only
(:mod:`operators.versioned_batch`), so a promotion needs no restart, loses no
event, and a crash mid-swap resumes on the version its checkpoint names. A
shadowed candidate scores the same events into shadow-decisions. Every decision
names the stages that ran, each model's version and score, and in ``flags``
what it was made without (profile, store, in-order time). Configuration comes
from ``SLUICE_*`` variables (:class:`sluice.settings.FraudSettings`); the flow is
built by :func:`from_env` (importing this module loads no model).
"""

from __future__ import annotations

import functools
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import bytewax.operators as op
import numpy as np
import orjson
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink

from dataflows.command_line import writes_checkpoints
from dataflows.observability import alarm_records, artifact_references
from dataflows.runtime import flow_from_env, kafka_source, shards_for
from models.devices import pick_device
from models.fraud_feature_log import feature_log_body
from models.fraud_features import CardProfile, feature_rows, parse_profile, sequence_rows
from models.fraud_model import FraudCascade, combine_scores, load_cascade, model_name
from models.fraud_policy import Policy
from models.fraud_rationale import Case, choose_notes, note_messages
from models.registry import ModelRegistry, ModelUnusable
from models.transaction import Transaction, parse_transaction
from models.wire import four_decimals
from operators.alarms import ScoreSample
from operators.async_batch import async_micro_batch
from operators.dead_letter import DeadLetter, parse_or_dead_letter
from operators.enrich import FetchMany, enrich_batch
from operators.event_windows import (
    Features,
    RecentEvents,
    Windowed,
    WindowSpec,
    WindowStatus,
    beside_buckets,
    recent_rows,
    sliding_features,
)
from operators.kafka.output import kafka_output
from operators.kafka.records import Headers, KafkaRecord, SourceRecord
from operators.metrics import model_call, record_outcomes
from operators.microbatch import micro_batch
from operators.routing import split_by_route
from operators.taps import BatchTap, tap_stream
from operators.tracing import trace_headers
from operators.versioned_batch import VersionedModels, versioned_batch
from sluice.settings import FraudSettings
from state.feature_store import FeatureStore, Unreadable
from state.tuple_pickle import tuple_pickled

RECENT_EVENTS = 32  # what the sequence model sees (models.fraud_features.SEQUENCE_LENGTH)


# not frozen: a frozen dataclass sets each field through object.__setattr__ (5x the __init__ cost), and
# this is made for every event; treat it as immutable
@tuple_pickled  # crosses processes at keyed steps
@dataclass(slots=True)
class CardEvent:
    """A parsed transaction and the record it came from (its bytes and position)."""

    source: SourceRecord
    txn: Transaction


# not frozen: a frozen dataclass sets each field through object.__setattr__ (5x the __init__ cost), and
# this is made for every event; treat it as immutable
@tuple_pickled  # crosses processes at keyed steps
@dataclass(slots=True)
class EnrichedEvent:
    """What stage 1 gets: the event, its window features, status and recent events, and the card's profile."""

    event: CardEvent
    features: Features
    status: WindowStatus
    profile: CardProfile | None
    profile_problem: str | None  # why a profile that exists could not be used (then ``profile`` is None)
    store_down: bool  # the store could not be read *and* this event has no profile (a cached one still serves)
    recent: RecentEvents | None = None  # flat (time, amount, (category, country)) triples, this event last

    def flags(self) -> list[str]:
        """Why this decision was made with less than the full picture (empty when it was not). Only an event
        without a profile has a profile flag: the store was down, the profile was invalid, or there was none."""
        out = [] if self.status is WindowStatus.OK else [f"event_{self.status.value}"]
        if self.profile is None:
            if self.store_down:
                out.append("feature_store_down")
            elif self.profile_problem is not None:
                out.append("profile_invalid")
            else:
                out.append("profile_missing")
        return out

    def sequence(self) -> np.ndarray:
        """The stage-2 input: the card's recent events as the sequence model sees them."""
        recent = [] if self.recent is None else [(t, v, e[0], e[1]) for t, v, e in recent_rows(self.recent)]
        return sequence_rows(recent, self.profile)


# not frozen: a frozen dataclass sets each field through object.__setattr__ (5x the __init__ cost), and
# this is made for every event; treat it as immutable
@tuple_pickled  # crosses processes at keyed steps
@dataclass(slots=True)
class Scored:
    """An event after the stages that ran: its scores, the versions that made them, and the decision."""

    item: EnrichedEvent
    row: np.ndarray  # the stage-1 feature row, exactly as scored
    rules: list[str]
    version: str
    stage1_kind: str
    stage1: float
    escalate: bool
    stage2: float | None = None
    sequence: np.ndarray | None = None
    score: float = 0.0
    decision: str = ""


def _finish(s: Scored, policy: Policy, stage2: float | None = None, sequence: np.ndarray | None = None) -> Scored:
    score = s.stage1 if stage2 is None else float(combine_scores(np.array([s.stage1]), np.array([stage2]))[0])
    return Scored(
        s.item, s.row, s.rules, s.version, s.stage1_kind, s.stage1, s.escalate, stage2, sequence, score,
        policy.decide(score, s.rules),
    )  # fmt: skip


def stage1_batch(
    cascade: FraudCascade | None,
    version: str | None,
    items: list[EnrichedEvent],
    policy: Policy,
    samples: BatchTap[ScoreSample] | None = None,
) -> list[Scored]:
    """Score a micro-batch with the pinned version's stage-1 model (one call), mark what to escalate and decide
    the rest; the scores and rows go to ``samples`` (the drift alarms) when metrics are on."""
    assert cascade is not None and version is not None, "the served model is loaded before the flow starts"
    txns, profiles = [e.event.txn for e in items], [e.profile for e in items]
    rows = feature_rows(txns, [e.features for e in items], profiles)
    rules = policy.rules_of(rows, txns, profiles)
    band, kind = cascade.band, cascade.stage1_kind
    with model_call(model_name(kind), version, str(cascade.device), len(rows)):
        array = cascade.stage1(rows)
    if samples is not None:
        samples.put(ScoreSample(model_name(kind), version, array, rows))
    scores, decide = array.tolist(), policy.decide
    out = []
    for item, row, fired, score in zip(items, rows, rules, scores, strict=True):
        if band.wants(score, bool(fired)):
            out.append(Scored(item, row, fired, version, kind, score, True))
        else:  # final already: decided here, not copied into a second Scored later
            out.append(Scored(item, row, fired, version, kind, score, False, None, None, score, decide(score, fired)))
    return out


def stage2_batch(
    served: VersionedModels[FraudCascade],
    items: list[Scored],
    policy: Policy,
    samples: BatchTap[ScoreSample] | None = None,
) -> list[Scored]:
    """Score escalated events with the sequence model of the version that scored their stage 1."""
    out: list[Scored | None] = [None] * len(items)
    by_version: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(items):
        by_version[s.version].append(i)
    for version, idx in by_version.items():
        cascade = served.get(version)
        assert cascade is not None
        seqs = np.stack([items[i].item.sequence() for i in idx])
        rows = np.stack([items[i].row for i in idx])
        with model_call(model_name("gru"), version, str(cascade.device), len(idx)):
            stage2 = cascade.stage2(seqs, rows, np.array([items[i].stage1 for i in idx]))
        if samples is not None:
            samples.put(ScoreSample(model_name("gru"), version, stage2))
        for j, i in enumerate(idx):
            out[i] = _finish(items[i], policy, float(stage2[j]), seqs[j])
    return [s for s in out if s is not None]


@functools.lru_cache(maxsize=64)
def _stages(version: str, stage1_kind: str, escalated: bool) -> tuple[list[str], dict[str, str]]:
    """The ``stages`` and ``models`` fields for a version and path (a handful of distinct values, shared by
    every decision that took that path: built once, only serialised per event)."""
    stages = [stage1_kind, "gru"] if escalated else [stage1_kind]
    return stages, {kind: f"{version}/{kind}" for kind in stages}


def _decision_body(s: Scored) -> dict[str, Any]:
    txn, feats, item = s.item.event.txn, s.item.features, s.item
    stages, models = _stages(s.version, s.stage1_kind, s.stage2 is not None)
    scores = {s.stage1_kind: four_decimals(s.stage1)}
    if s.stage2 is not None:
        scores["gru"] = four_decimals(s.stage2)
    body: dict[str, Any] = {
        "event_id": txn.event_id,
        "card_id": txn.card_id,
        "decision": s.decision,
        "score": four_decimals(s.score),
        "rules": s.rules,
        "model_version": s.version,
        "stages": stages,
        "models": models,
        "scores": scores,
        "flags": item.flags(),
        "profile_fallback": item.profile is None,
        "feature_store_down": item.store_down,
        "features": {
            "count_1m": feats[0],
            "count_1h": feats[2],
            "distinct_1h": feats[4],
            "secs_since_prev": feats[5],
        },
        # what the review chain (dataflows/review.py) needs to pick a chain without the transaction
        "amount": txn.amount,
        "country": txn.country,
        "merchant_category": txn.merchant_category,
        "event_time": txn.event_time_ms,
        "sent_at": txn.sent_at_ms,
    }
    if item.profile_problem is not None:
        body["profile_problem"] = item.profile_problem
    return body


def _output_headers(source: SourceRecord) -> Headers:
    """What a decision-like record carries besides its body: the input's identity and its trace."""
    identity = source.identity()
    return [identity, *trace_headers(source)] if source.headers else [identity]


def decision_records(batch: list[Scored], settings: FraudSettings) -> list[KafkaRecord]:
    """Each decision, and its feature-log record when the log is on.

    Both carry the input's identity (``sluice.id``: topic/partition/offset, what the exactly-once sink
    recognises) and its trace headers, nothing else: the event's id and time and the decision time are in
    the body, and every header costs the producer a conversion per record (two records per event).
    """
    decided_ms = time.time() * 1000.0
    decisions_topic, features_topic = settings.decisions_topic, settings.features_topic
    out = []
    for s in batch:
        txn, source = s.item.event.txn, s.item.event.source
        body = _decision_body(s)
        body["decided_at"] = decided_ms
        headers = _output_headers(source)
        out.append(KafkaRecord(decisions_topic, txn.card_id.encode(), orjson.dumps(body), headers))
        if features_topic:
            logged = feature_log_body(
                txn.event_id, txn.card_id, s.version, txn.event_time_ms, s.row, s.sequence, s.rules, body["scores"]
            )
            out.append(KafkaRecord(features_topic, txn.event_id.encode(), logged, headers))
    record_outcomes(s.decision for s in batch)
    return out


# --- stage 3: notes for the analysts, off the decision path ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class PendingNote:
    """A case waiting for its note: the facts, and what the record needs."""

    case: Case
    card_id: str
    decided_ms: float
    headers: Headers


def needs_note(s: Scored, settings: FraudSettings) -> bool:
    """Reviews always get a note; declines when the amount is at least the configured one."""
    return s.decision == "review" or (
        s.decision == "decline" and s.item.event.txn.amount >= settings.rationale_min_decline_amount
    )


def pending_note(s: Scored, policy: Policy) -> PendingNote:
    txn, item = s.item.event.txn, s.item
    scores = ((s.stage1_kind, s.stage1),) + (() if s.stage2 is None else (("gru", s.stage2),))
    rows = [] if item.recent is None else recent_rows(item.recent)
    recent = tuple((txn.event_time_s - t, v, e[0]) for t, v, e in rows[-6:-1])
    case = Case(
        event_id=txn.event_id,
        decision=s.decision,
        amount=txn.amount,
        currency=txn.currency,
        usual_amount=item.profile.avg_amount if item.profile else None,
        merchant=txn.merchant_name or txn.merchant_id,
        category=txn.merchant_category,
        country=txn.country,
        home_country=item.profile.home_country if item.profile else None,
        signals=tuple(policy.explain(r, txn, item.features, item.profile) for r in s.rules),
        scores=scores,
        recent=recent,
    )
    headers = [*item.event.source.position.headers(), ("event.id", txn.event_id.encode())]
    return PendingNote(case, txn.card_id, time.time() * 1000.0, headers)


def note_records(batch: list[PendingNote], settings: FraudSettings, use_llm: bool) -> list[KafkaRecord]:
    """Notes for a batch of cases: the LLM's where it passes the checks in time, the template's otherwise."""
    cases = [p.case for p in batch]
    generated: list[str | None] = [None] * len(batch)
    truncated = [False] * len(batch)
    model = "template"
    if use_llm:
        from models.llm import plan_batch, shared_generator  # transformers: imported only where notes are generated

        llm = shared_generator(settings.device)
        model = llm.name
        deadlines = [p.decided_ms / 1000.0 + settings.rationale_deadline_s for p in batch]
        conversations = [note_messages(c) for c in cases]
        rows, max_new = plan_batch(
            deadlines, time.time(), llm.prompt_tokens(conversations), llm.speed, min_new=16, max_new=48
        )
        if rows:
            texts = llm.generate([conversations[i] for i in rows], max_new, [deadlines[i] for i in rows])
            for i, g in zip(rows, texts, strict=True):
                generated[i], truncated[i] = g.text, g.truncated
    out = []
    written_ms = time.time() * 1000.0
    not_tried = (
        "" if use_llm else f"template notes (SLUICE_RATIONALE_MODE={settings.rationale_mode}; auto: LLM on a GPU only)"
    )
    for p, (note, source, problem) in zip(batch, choose_notes(cases, generated, truncated, not_tried), strict=True):
        body = {
            "event_id": p.case.event_id,
            "card_id": p.card_id,
            "decision": p.case.decision,
            "rationale": note,
            "source": source,
            "model": model if source == "llm" else "template",
            "not_generated_because": problem,
            "facts": p.case.facts(),
            "decided_at": p.decided_ms,
            "written_at": written_ms,
        }
        out.append(KafkaRecord(settings.rationales_topic, p.case.event_id.encode(), orjson.dumps(body), p.headers))
    return out


def use_llm_notes(settings: FraudSettings) -> bool:
    """``auto`` writes LLM notes on a GPU only: on a CPU the LLM would take the cores the decisions need."""
    if settings.rationale_mode == "auto":
        return pick_device(settings.device).type == "cuda"
    return settings.rationale_mode == "llm"


# --- shadow scoring ----------------------------------------------------------------------------------------------


def cascade_batch(cascade: FraudCascade, version: str, items: list[EnrichedEvent], policy: Policy) -> list[Scored]:
    """Both stages in one call (the shadow's path, and tests): what the two steps of the flow compute."""
    first = stage1_batch(cascade, version, items, policy)
    up = [s for s in first if s.escalate]
    if not up:
        return first  # stage 1 decided every event it did not escalate
    seqs = np.stack([s.item.sequence() for s in up])
    stage2 = cascade.stage2(seqs, np.stack([s.row for s in up]), np.array([s.stage1 for s in up]))
    done = iter(_finish(s, policy, float(p), q) for s, p, q in zip(up, stage2, seqs, strict=True))
    return [next(done) if s.escalate else s for s in first]


def shadow_batch(
    cascade: FraudCascade | None, version: str | None, items: list[EnrichedEvent], policy: Policy, topic: str
) -> list[KafkaRecord | None]:
    """The candidate's whole cascade on the same events (``None`` each when nothing is shadowed)."""
    if cascade is None or version is None:
        return [None] * len(items)
    decided_ms = time.time() * 1000.0
    out: list[KafkaRecord | None] = []
    for s in cascade_batch(cascade, version, items, policy):
        body = _decision_body(s) | {"decided_at": decided_ms, "shadow": True}
        txn = s.item.event.txn
        out.append(KafkaRecord(topic, txn.card_id.encode(), orjson.dumps(body), _output_headers(s.item.event.source)))
    return out


# --- wiring ------------------------------------------------------------------------------------------------------


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


def model_sources(settings: FraudSettings) -> tuple[VersionedModels[FraudCascade], VersionedModels[FraudCascade]]:
    """The served and the shadowed versions, loaded on demand from the registry (one pair per process)."""
    registry = ModelRegistry(settings.model_path)

    def load(version: str) -> FraudCascade:
        return load_cascade(registry.folder(version), settings.device, stage1=settings.stage1_model)

    served = VersionedModels(registry.served, load, settings.model_check_s)
    shadowed = VersionedModels(registry.candidate, load, settings.model_check_s, optional=True)
    try:
        ready = served.ready_version()
    except Exception as exc:  # whatever a broken artifact raises, the flow cannot start on it
        raise ModelUnusable(
            f"the served fraud model {registry.served()} in {registry.root} does not load ({exc}); "
            "serve a working version with `sluice model promote` or `sluice model rollback`"
        ) from None
    if ready is None:
        raise FileNotFoundError(f"no served fraud model in {registry.root}: train one with `sluice train fraud`")
    shadowed.ready_version()  # a candidate starts loading now, in the background: events shadow once it is ready
    return served, shadowed


def _card_of(item: tuple[str, Windowed[CardEvent]]) -> str:
    return item[0]


def _card_events(parsed: list[tuple[SourceRecord, Transaction]]) -> list[tuple[str, CardEvent]]:
    return [(txn.card_id, CardEvent(src, txn)) for src, txn in parsed]


def _final(policy: Policy, batch: list[Scored]) -> list[Scored]:
    """Decide the events that end at stage 1 (stage 1 decided those it did not mark for escalation)."""
    return [s if s.decision else _finish(s, policy) for s in batch]


def _enriched(
    item: tuple[str, Windowed[CardEvent]], lookup: CardProfile | Unreadable | None, down: bool
) -> EnrichedEvent:
    w = item[1]
    assert w.features is not None, "duplicates are not scored"
    if isinstance(lookup, Unreadable):
        return EnrichedEvent(w.event, w.features, w.status, None, lookup.reason, False, w.recent)
    # "store down" only for the events it left without a profile: cached profiles still served
    return EnrichedEvent(w.event, w.features, w.status, lookup, None, down and lookup is None, w.recent)


_FOR_INSPECTION = (WindowStatus.DUPLICATE, WindowStatus.AHEAD)


def _to_score(batch: list[tuple[str, Windowed[CardEvent]]]) -> list[tuple[str, Windowed[CardEvent]]]:
    """Every windowed event but duplicates (decided once already)."""
    return [x for x in batch if x[1].status is not WindowStatus.DUPLICATE]


def _window_letters(batch: list[tuple[str, Windowed[CardEvent]]]) -> list[DeadLetter]:
    return [_window_letter(x) for x in batch if x[1].status in _FOR_INSPECTION]


def _window_letter(item: tuple[str, Windowed[CardEvent]]) -> DeadLetter:
    """Duplicates (not decided again) and events dated too far ahead (decided, kept for inspection)."""
    w = item[1]
    if w.status is WindowStatus.DUPLICATE:
        reason = f"duplicate event id {w.event.txn.event_id!r}: this card already has a decision for it"
    else:
        reason = "event time too far ahead of the clock: decided without moving the card's window"
    return DeadLetter(reason, "window", w.event.source, decided=True)


def _source_of(x: EnrichedEvent | Scored) -> SourceRecord:
    return x.event.source if isinstance(x, EnrichedEvent) else x.item.event.source


def _route(cascade: bool, s: Scored) -> str:
    return "escalate" if cascade and s.escalate else "final"


def _card_id(x: EnrichedEvent | Scored) -> str:
    return x.event.txn.card_id if isinstance(x, EnrichedEvent) else x.item.event.txn.card_id


def build_flow(
    settings: FraudSettings,
    policy: Policy = Policy(),
    name: str = "fraud",
    *,
    source: Source[SourceRecord] | None = None,
    sink: Sink[KafkaRecord] | None = None,
) -> Dataflow:
    """The fraud dataflow for ``settings`` (see the module docstring). ``source`` and ``sink`` replace the
    Kafka input and output (in-memory ones: :mod:`perf.fraud_inprocess` measures the flow without Kafka)."""
    served, shadowed = model_sources(settings)  # a missing model fails at start, not mid-stream
    flow = Dataflow(name)
    records: Stream[SourceRecord] = op.input(
        "transactions", flow, source or kafka_source(settings, settings.transactions_topic, settings.start_from)
    )
    parsed = parse_or_dead_letter("parse", records, parse_transaction)
    windows = sliding_features(
        "window",
        op.flat_map_batch("by_card", parsed.ok, _card_events),
        ts_getter=lambda ev: ev.txn.event_time_s,
        value_getter=lambda ev: ev.txn.amount,
        tag_getter=lambda ev: ev.txn.merchant_id,
        spec=WindowSpec(allowed_lateness_s=settings.allowed_lateness_s),
        idle_timeout=timedelta(seconds=settings.card_idle_timeout_s),
        id_getter=lambda ev: ev.txn.event_id,
        max_ahead=timedelta(seconds=settings.max_event_ahead_s),
        extra_getter=lambda ev: (ev.txn.merchant_category, ev.txn.country),
        recent=RECENT_EVENTS,
        origin=lambda ev: ev.source,
        buckets=settings.window_buckets,
        buckets_setting="SLUICE_WINDOW_BUCKETS",
        checkpointed=writes_checkpoints(os.environ),
    )
    to_score = op.flat_map_batch("not_duplicates", windows, _to_score)  # batch steps: no call per item
    enriched: Stream[EnrichedEvent] = enrich_batch(
        "profiles",
        to_score,
        functools.partial(profile_reader, settings),
        _card_of,
        _enriched,
        origin=lambda item: item[1].event.source,
    )
    max_wait = timedelta(milliseconds=settings.max_wait_ms)
    shards = shards_for(settings.inference_shards)
    beside = beside_buckets(settings.window_buckets)  # each card's model calls on its window's worker
    samples: BatchTap[ScoreSample] = BatchTap()  # every model call's scores, for the drift alarms
    stage1 = versioned_batch(
        "stage1",
        enriched,
        functools.partial(stage1_batch, policy=policy, samples=samples),
        served,
        _card_id,
        settings.max_batch,
        max_wait,
        shards,
        origin=_source_of,
        placement=beside,
    )
    routes = split_by_route("cascade", stage1, functools.partial(_route, settings.cascade), ["escalate", "final"])
    stage2 = micro_batch(
        "stage2",
        routes["escalate"],
        functools.partial(stage2_batch, served, policy=policy, samples=samples),
        shard_key=_card_id,
        max_batch=settings.stage2_max_batch,
        max_wait=timedelta(milliseconds=settings.stage2_max_wait_ms),
        shards=shards,
        origin=_source_of,
        placement=beside,
    )
    final = op.flat_map_batch("stage1_final", routes["final"], functools.partial(_final, policy))
    decided = op.merge("decided", final, stage2)
    out = op.flat_map_batch("decisions", decided, functools.partial(decision_records, settings=settings))
    alarms = alarm_records(
        settings,
        records,
        slo_stage="stage1",
        drift=tap_stream("score_samples", out, samples),
        references=artifact_references(settings.model_path),
    )
    outputs = [out, alarms]

    shadow = versioned_batch(
        "shadow",
        op.flat_map_batch("shadowing", enriched, lambda xs: xs if shadowed.ready_version() is not None else []),
        functools.partial(shadow_batch, policy=policy, topic=settings.shadow_topic),
        shadowed,
        _card_id,
        settings.max_batch,
        max_wait,
        shards,
        placement=beside,
    )
    outputs.append(op.filter_map("shadow_decisions", shadow, lambda r: r))

    if settings.rationales_topic:
        cases = op.flat_map_batch(
            "cases", decided, lambda xs: [pending_note(s, policy) for s in xs if needs_note(s, settings)]
        )
        notes = async_micro_batch(
            "rationale",
            cases,
            functools.partial(note_records, settings=settings, use_llm=use_llm_notes(settings)),
            shard_key=lambda p: p.card_id,
            max_batch=settings.rationale_max_batch,
            max_wait=timedelta(milliseconds=50),
        )
        outputs.append(notes)

    dead = op.merge("dead", parsed.dead, op.flat_map_batch("window_letters", windows, _window_letters))
    outputs.append(op.map("dlq_records", dead, lambda d: d.to_record(settings.dlq_topic)))
    everything = op.merge("all_out", *outputs)
    if sink is not None:
        op.output("out", everything, sink)
        return flow
    kafka_output(
        "out",
        everything,
        settings.connection(),
        settings.output_topics(),
        exactly_once=settings.exactly_once,
        transactional_id_prefix=settings.transactional_id_prefix,
    )
    return flow


def from_env() -> Dataflow:
    """The flow ``SLUICE_*`` variables describe, after checking Kafka, the topics, Redis and the device."""
    return flow_from_env(FraudSettings, build_flow, redis=True)
