"""Personalization: user tastes updated live from interactions, ANN retrieval over the catalogue, rules as data.

    python -m bytewax.run "dataflows.personalize:from_env()"
    python -m bytewax.run "dataflows.personalize:from_env()" -r .recovery -s 1 -b 0   # recoverable
    sluice run personalize -- -r .recovery -s 1 -b 0                              # the same

catalog -> parse (bad, wrong-dimension vectors -> DLQ) -> micro-batched MiniLM
embedding of new or reworded items (an unchanged text keeps its stored vector) ->
versioned write-through to Redis (<ns>-item:<id>) -> every index replica
interactions -> parse -> item from Redis (batched, cached; unknown -> DLQ)
    -> per user: decayed taste (checkpointed) -> versioned write-through (<ns>-user:<id>)
    -> per category and overall: decayed popularity -> every index replica
rules -> validate (bad -> DLQ, the previous set stays) -> every index replica
recommend-requests -> parse (bad -> DLQ) -> user vector from Redis (one batched
read per batch, cached; unusable -> fallback + DLQ copy) -> one index replica:
one ANN search for the batch's queries (over-fetched), rules filter and re-rank,
popularity for cold-start users -> recommendations

The item index is not checkpointed (100k vectors every epoch would be hundreds
of MB a second): each replica bulk-loads the items Redis holds when it starts,
then follows the catalogue stream. Redis writes are versioned, so a replay
after a crash converges on what a crash-free run holds. Configuration:
``SLUICE_*`` variables (:class:`sluice.settings.PersonalizeSettings`).
Observability (:mod:`dataflows.observability`): stage metrics with request ages,
the encoder's call times, each replica's size and update delay; recommendations
carry the request's ``traceparent``; SLO burn is measured when a request has been
answered (``catalogue_query``).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, cast

import bytewax.operators as op
import numpy as np
import orjson
import redis
from bytewax.dataflow import Dataflow, Stream

from dataflows.observability import alarm_records
from dataflows.runtime import flow_from_env, limit_threads, shards_for
from models.rules import Candidate, Ranked, RuleSet, Shopper, parse_rule_set, rank
from models.shopping import (
    CatalogItem,
    Interaction,
    ItemRecord,
    RecommendRequest,
    parse_catalog_event,
    parse_interaction,
    parse_item_record,
    parse_recommend_request,
    text_digest,
)
from models.text_encoder import shared_encoder
from models.user_taste import Taste, UserProfile, parse_kind_weights, parse_user_profile
from operators.dead_letter import DeadLetter, parse_or_dead_letter
from operators.decayed_top import Ranking, decayed_top
from operators.enrich import enrich_batch
from operators.kafka.output import kafka_output
from operators.kafka.records import ID_HEADER, KafkaRecord, Position, SourceRecord
from operators.kafka.source import KafkaPartitionSource
from operators.keyed_fold import fold_latest
from operators.lifecycle import fail
from operators.metrics import model_call, record_index
from operators.microbatch import micro_batch
from operators.replicated import replicated
from operators.tracing import trace_headers
from operators.write_through import write_through
from sluice.settings import PersonalizeSettings
from state.ann_index import AnnIndex, Change, Hits
from state.feature_store import FeatureStore, Unreadable

log = logging.getLogger(__name__)
EVERYONE = "*"  # the popularity key of all categories together


@dataclass(frozen=True, slots=True)
class ItemUpdate:
    """An embedded catalogue event on its way to Redis and the index replicas."""

    item_id: str
    record: ItemRecord
    position: Position
    sent_at_ms: float
    embedded_at: float


@dataclass(frozen=True, slots=True)
class Counted:
    """An interaction with the item it is about (from the online store)."""

    interaction: Interaction
    item: ItemRecord
    position: Position


@dataclass(frozen=True, slots=True)
class TasteWrite:
    """A user's taste as the online store gets it."""

    version: int
    fields: dict[str, bytes]


@dataclass(frozen=True, slots=True)
class Ask:
    """A recommendation request on its way through the flow, collecting what each step adds."""

    request: RecommendRequest
    source: SourceRecord
    received_at: float
    profile: UserProfile | None = None
    problem: str | None = None  # why the stored user vector could not be used
    store_down: bool = False
    looked_up_at: float = 0.0


Update = tuple[str, Any]  # ("item", ItemUpdate) | ("rules", RuleSet) | ("popular", (category, Ranking))
Payload = tuple[str, str, float, bool]  # category, brand, price, in stock: what the rules need of an indexed item


def _unit(vector: np.ndarray) -> np.ndarray:
    return (vector / np.linalg.norm(vector)).astype(np.float32)


StoredItems = Callable[[Iterable[str]], tuple[dict[str, Any], bool]]  # FeatureStore.get_many of item hashes


def embed_items(
    batch: list[tuple[SourceRecord, CatalogItem]], device: str, int8: bool | None, stored: StoredItems | None = None
) -> list[ItemUpdate]:
    """One encoder call for the batch's upserts that came without a vector; precomputed ones are normalised.

    With ``stored`` (the item hashes in Redis), an upsert whose text and encoder are those the stored
    vector was computed from (:func:`models.shopping.text_digest`) keeps that vector instead: a price or
    stock change costs no encoder call. The encoder is deterministic and batch-independent, so the
    vector is the one it would compute; when Redis cannot be read, everything is embedded.
    """
    encoder = shared_encoder(device, int8)
    texts = [None if item.deleted or item.embedding is not None else item.text() for _, item in batch]
    digests = ["" if text is None else text_digest(text, encoder.name) for text in texts]
    vectors: dict[str, np.ndarray] = {}  # by digest: the same text and encoder give the same vector
    if stored is not None and any(digests):
        records, _down = stored({item.item_id for (_, item), d in zip(batch, digests, strict=True) if d})
        for rec in records.values():
            if isinstance(rec, ItemRecord) and rec.vector is not None and rec.text_digest:
                vectors[rec.text_digest] = rec.vector
    to_embed = {d: text for d, text in zip(digests, texts, strict=True) if text is not None and d not in vectors}
    with model_call("text-encoder", encoder.name, str(encoder.device), len(to_embed)):
        if to_embed:
            vectors.update(zip(to_embed, encoder.encode(list(to_embed.values())), strict=True))
    now = time.time()
    out = []
    for (src, item), digest in zip(batch, digests, strict=True):
        vector = None
        if digest:
            vector = vectors[digest]
        elif not item.deleted and item.embedding is not None:
            vector = _unit(np.asarray(item.embedding, dtype=np.float32))
        record = ItemRecord(
            item.version, vector, item.category, item.brand, item.price, item.in_stock, item.deleted, digest
        )
        out.append(ItemUpdate(item.item_id, record, src.position, item.sent_at_ms, now))
    return out


def _counted(
    item: tuple[SourceRecord, Interaction], lookup: ItemRecord | Unreadable | None, down: bool
) -> Counted | DeadLetter:
    src, interaction = item
    if isinstance(lookup, Unreadable):
        return DeadLetter(f"item {interaction.item_id!r} cannot be used: {lookup.reason}", "items", src)
    if lookup is None:
        why = "the item store is unreachable" if down else "it is not in the catalogue"
        return DeadLetter(f"unknown item {interaction.item_id!r}: {why}", "items", src)
    if lookup.vector is None:
        return DeadLetter(f"item {interaction.item_id!r} was deleted before it was ever embedded", "items", src)
    return Counted(interaction, lookup, src.position)


def _asked(item: tuple[SourceRecord, RecommendRequest]) -> Ask:
    src, req = item
    return Ask(req, src, time.time())


def _with_profile(ask: Ask, lookup: UserProfile | Unreadable | None, down: bool) -> Ask:
    now = time.time()
    if isinstance(lookup, Unreadable):
        return replace(ask, problem=lookup.reason, looked_up_at=now)
    # "store down" only for the requests it left without a vector: cached ones are still served
    return replace(ask, profile=lookup, store_down=down and lookup is None, looked_up_at=now)


def _record(
    topic: str, key: str, ident: bytes, body: dict[str, Any], source: SourceRecord | None = None
) -> KafkaRecord:
    """An output record whose ``sluice.id`` is ``ident`` (the input it answers, per replica where it matters),
    with the trace headers of the input ``source``."""
    headers = [(ID_HEADER, ident), *trace_headers(source)]
    return KafkaRecord(topic=topic, key=key.encode(), value=orjson.dumps(body), headers=headers)


def _first(item: tuple[SourceRecord, Any]) -> SourceRecord:
    return item[0]


def _ask_source(ask: Ask) -> SourceRecord:
    return ask.source


class CatalogueReplica:
    """One copy of the item index with the rule set in force and the popularity tables.

    Built on its worker: it bulk-loads the items Redis holds, then applies the
    catalogue stream. Its snapshot is the rule set and the popularity tables
    (small); the index comes back from Redis on resume.
    """

    def __init__(self, name: str, settings: PersonalizeSettings, dim: int, resume: dict[str, Any] | None) -> None:
        self.name = name
        self.settings = settings
        self.index = AnnIndex(dim, settings.ann_nlist, settings.ann_nprobe, settings.ann_train_at)
        self.rules: RuleSet = resume["rules"] if resume else RuleSet()
        self.popular: dict[str, Ranking] = dict(resume["popular"]) if resume else {}
        self._popular_candidates: dict[str, list[Candidate]] = {}
        started = time.perf_counter()
        loaded = self._load(dim)
        log.info("index replica %s: %d items loaded from Redis in %.1fs", name, loaded, time.perf_counter() - started)

    def _load(self, dim: int) -> int:
        store: FeatureStore[ItemRecord] = FeatureStore(
            self.settings.redis_url,
            f"{self.settings.redis_namespace}-item",
            socket_timeout_s=30.0,
            parse_raw=functools.partial(parse_item_record, dim=dim),
        )
        try:
            for page in store.scan():
                changes = [_change(item_id, rec) for item_id, rec in page if isinstance(rec, ItemRecord)]
                self.index.apply(changes)
        except redis.RedisError as exc:
            fail(f"cannot load the item index from Redis ({type(exc).__name__}: {exc}); check SLUICE_REDIS_URL")
        finally:
            store.close()
        return self.index.count

    def update(self, updates: list[Update]) -> list[KafkaRecord]:
        items = [u for kind, u in updates if kind == "item"]
        for kind, value in updates:
            if kind == "rules" and value.version > self.rules.version:
                self.rules = value
            elif kind == "popular":
                category, ranking = value
                self.popular[category] = ranking
                self._popular_candidates.pop(category, None)
        if not items:
            return []
        applied = self.index.apply([_change(u.item_id, u.record) for u in items])
        self._popular_candidates.clear()  # stock and deletes may have changed
        now = time.time()
        # freshness: how long the newest update took from its producer to being searchable here
        sent = items[-1].sent_at_ms / 1000.0
        record_index(f"items-{self.name}", {"items": self.index.count}, 0, max(0.0, now - sent) if sent > 0 else 0.0)
        return [self._change_record(u, ok, now) for u, ok in zip(items, applied, strict=True)]

    def _change_record(self, u: ItemUpdate, applied: bool, now: float) -> KafkaRecord:
        body = {
            "change_id": f"{u.item_id}@{u.record.version}@{self.name}",
            "item_id": u.item_id,
            "version": u.record.version,
            "op": "delete" if u.record.deleted else "upsert",
            "applied": applied,
            "searchable": u.item_id in self.index,
            "replica": self.name,
            "index_items": self.index.count,
            "index_version": self.index.changes,
            "sent_at": u.sent_at_ms,
            "embedded_at": u.embedded_at * 1000.0,
            "applied_at": now * 1000.0,
        }
        ident = u.position.id + b"@" + self.name.encode()
        return _record(self.settings.catalog_changes_topic, u.item_id, ident, body)

    def _candidate(self, item_id: str, score: float, found_by: str) -> Candidate | None:
        payload: Payload | None = self.index.payloads.get(item_id)  # type: ignore[assignment]
        if payload is None:
            return None
        return Candidate(item_id, score, *payload, found_by)

    def _similar(self, hits: Hits) -> Iterator[Candidate]:
        """The search's hits as candidates, made as they are read (ranking stops long before the over-fetched
        end); :meth:`_candidate` inlined, as this runs for every hit read."""
        payloads: dict[str, Payload] = self.index.payloads  # type: ignore[assignment]
        return (
            Candidate(item, score, *payload, "similar")
            for item, score in hits
            if (payload := payloads.get(item)) is not None
        )

    def popular_in(self, category: str) -> list[Candidate]:
        """The popularity ranking of ``category`` (or of everything) as candidates, scores in (0, 1]."""
        key = category if category in self.popular else EVERYONE
        cached = self._popular_candidates.get(key)
        if cached is None:
            ranking = self.popular.get(key, ())
            best = ranking[0][1] if ranking else 1.0
            reason = "popular" if key == EVERYONE else f"popular_in_{key}"
            found = (self._candidate(item, count / best, reason) for item, count in ranking)
            cached = self._popular_candidates[key] = [c for c in found if c is not None]
        return cached

    def answer(self, asks: list[Ask]) -> list[KafkaRecord]:
        s = self.settings
        started = time.time()
        # Hits are filed by the ask's place in the batch: request ids are the client's, and two requests
        # with one id (a retry, a buggy client) must not get each other's, or another user's, results.
        personal = [
            (i, a.profile) for i, a in enumerate(asks) if a.profile is not None and a.profile.vector is not None
        ]
        fetch = [min(s.max_fetch, asks[i].request.k * s.overfetch + len(p.seen)) for i, p in personal]
        found: dict[int, Hits] = {}
        if personal:
            hits = self.index.search_hits(np.stack([p.vector for _, p in personal if p.vector is not None]), fetch)
            found = {i: h for (i, _), h in zip(personal, hits, strict=True)}
        searched = time.time()
        return [self._recommend(a, found.get(i), started, searched) for i, a in enumerate(asks)]

    def _recommend(self, ask: Ask, hits: Hits | None, started: float, searched: float) -> KafkaRecord:
        req, profile = ask.request, ask.profile
        flags: list[str] = []
        if ask.problem is not None:
            flags.append("user_vector_invalid")
        elif ask.store_down:
            flags.append("user_store_down")
        elif hits is None:
            flags.append("cold_start")
        shopper = Shopper(
            profile.seen if profile else {},
            profile.affinity if profile else {},
            profile.avg_price if profile else 0.0,
            req.category,
            req.sent_at_ms,
        )
        if hits is not None:
            top, excluded = rank(self._similar(hits), req.k, self.rules, shopper, best_first=True)
            if len(top) < req.k:  # the rules left too few: fill from what is popular where the user shops, then
                # from what is popular everywhere (a diversity cap can exhaust one category's brands)
                favourite = next(iter(shopper.affinity), req.category)
                every = [*self._similar(hits), *self.popular_in(req.category or favourite), *self.popular_in(EVERYONE)]
                top, excluded = rank(every, req.k, self.rules, shopper)
                flags.append("filled_from_popularity")
        else:
            top, excluded = rank(self.popular_in(req.category), req.k, self.rules, shopper)
            if len(top) < req.k and req.category in self.popular:  # a category with few popular items yet
                every = [*self.popular_in(req.category), *self.popular_in(EVERYONE)]
                top, excluded = rank(every, req.k, self.rules, shopper)
                flags.append("filled_from_popularity")
        done = time.time()
        body = {
            "request_id": req.request_id,
            "user_id": req.user_id,
            "k": req.k,
            "items": [_item_body(r) for r in top],
            "index_version": f"{self.name}:{self.index.changes}",
            "index_items": self.index.count,
            "rule_set_version": self.rules.version,
            "fallback": hits is None,
            "flags": flags,
            "excluded": excluded,
            "latency_ms": _latency(ask, started, searched, done),
            "sent_at": req.sent_at_ms,
            "recommended_at": done * 1000.0,
        }
        if ask.problem is not None:
            body["user_problem"] = ask.problem
        return _record(self.settings.recommendations_topic, req.user_id, ask.source.position.id, body, ask.source)

    def snapshot(self) -> dict[str, Any]:
        return {"rules": self.rules, "popular": dict(self.popular)}

    @classmethod
    def build(
        cls, settings: PersonalizeSettings, dim: int, name: str, resume: dict[str, Any] | None
    ) -> CatalogueReplica:
        return cls(name, settings, dim, resume)


def _change(item_id: str, rec: ItemRecord) -> Change:
    payload: Hashable = (rec.category, rec.brand, rec.price, rec.in_stock)
    return Change(item_id, rec.version, rec.vector if rec.searchable else None, payload)


def _item_body(r: Ranked) -> dict[str, Any]:
    return {"id": r.item_id, "score": round(r.score, 4), "reasons": list(r.reasons)}


def _latency(ask: Ask, started: float, searched: float, done: float) -> dict[str, float]:
    sent = ask.request.sent_at_ms / 1000.0
    stages = {
        "queue": ask.received_at - sent,
        "user_lookup": ask.looked_up_at - ask.received_at,
        "to_index": started - ask.looked_up_at,
        "search": searched - started,
        "rank": done - searched,
        "total": done - sent,
    }
    return {k: round(v * 1000.0, 2) for k, v in stages.items()}


def user_reader(settings: PersonalizeSettings, dim: int) -> Any:
    """Batched, cached, validated user-vector reads (built on the worker, never pickled)."""
    ttl = settings.user_cache_ttl_ms / 1000.0
    store: FeatureStore[UserProfile] = FeatureStore(
        settings.redis_url,
        f"{settings.redis_namespace}-user",
        ttl_s=ttl,
        negative_ttl_s=min(1.0, ttl),
        socket_timeout_s=settings.redis_timeout_ms / 1000.0,
        parse_raw=functools.partial(parse_user_profile, dim=dim),
    )
    return store.get_many


def _item_store(settings: PersonalizeSettings, dim: int, **cache: Any) -> FeatureStore[ItemRecord]:
    """The item hashes (``<ns>-item:<id>``), validated; ``cache``: the store's caching arguments."""
    return FeatureStore(
        settings.redis_url,
        f"{settings.redis_namespace}-item",
        socket_timeout_s=settings.redis_timeout_ms / 1000.0,
        parse_raw=functools.partial(parse_item_record, dim=dim),
        **cache,
    )


def item_reader(settings: PersonalizeSettings, dim: int) -> Any:
    """Batched, cached item reads for interactions."""
    return _item_store(settings, dim, ttl_s=settings.item_cache_ttl_s).get_many


def item_hashes(settings: PersonalizeSettings, dim: int) -> StoredItems:
    """The item hashes as Redis holds them now, for the embed step (no cache: one batched read per
    embedding batch); the store is made on the first call, on the worker that runs the step."""
    store: list[FeatureStore[ItemRecord]] = []

    def read(ids: Iterable[str]) -> tuple[dict[str, Any], bool]:
        if not store:
            store.append(_item_store(settings, dim, ttl_s=0.0, negative_ttl_s=0.0, max_cached=settings.embed_max_batch))
        return store[0].get_many(ids)

    return read


def store_writer(settings: PersonalizeSettings, kind: str) -> Any:
    """Versioned, pipelined writes into ``<ns>-<kind>:<id>`` (False while Redis is unreachable)."""
    store: FeatureStore[Any] = FeatureStore(
        settings.redis_url, f"{settings.redis_namespace}-{kind}", socket_timeout_s=settings.redis_timeout_ms / 1000.0
    )
    return store.try_put_versioned


def _is_dead(x: object) -> bool:
    return isinstance(x, DeadLetter)


def build_flow(settings: PersonalizeSettings, name: str = "personalize") -> Dataflow:
    """The personalization dataflow for ``settings`` (see the module docstring)."""
    limit_threads(settings.torch_threads)
    encoder = shared_encoder(settings.device, settings.int8)  # load now: fail at start, not mid-stream
    dim = encoder.dim
    weights = parse_kind_weights(settings.kind_weights)
    half_life_ms = settings.taste_half_life_h * 3_600_000.0
    conn = settings.connection()
    flow = Dataflow(name)

    def source(topic: str) -> KafkaPartitionSource:
        return KafkaPartitionSource(
            conn,
            [topic],
            start=settings.start_from,
            tail=not settings.stop_at_end,
            batch_size=settings.source_batch_size,
            give_up_after_s=settings.outage_timeout_s,
        )

    # Catalogue: embed, write through to Redis, then to every replica
    catalog = parse_or_dead_letter(
        "parse_catalog",
        op.input("catalog", flow, source(settings.catalog_topic)),
        functools.partial(parse_catalog_event, dim=dim),
    )
    embedded = micro_batch(
        "embed",
        catalog.ok,
        functools.partial(embed_items, device=settings.device, int8=settings.int8, stored=item_hashes(settings, dim)),
        shard_key=lambda si: si[1].item_id,
        max_batch=settings.embed_max_batch,
        max_wait=timedelta(milliseconds=settings.embed_max_wait_ms),
        shards=1,
        origin=_first,
    )
    stored_items = write_through(
        "items_to_redis",
        embedded,
        functools.partial(store_writer, settings, "item"),
        lambda u: (u.item_id, u.record.version, u.record.fields()),
        shards=settings.write_shards,
        eof_patience=timedelta(seconds=settings.outage_timeout_s),
    )
    rules = parse_or_dead_letter("parse_rules", op.input("rules", flow, source(settings.rules_topic)), parse_rule_set)

    # Interactions: the item from Redis, then each user's taste (written through) and popularity
    max_ahead_ms = settings.max_event_ahead_s * 1000.0
    interactions = parse_or_dead_letter(
        "parse_interactions",
        op.input("interactions", flow, source(settings.interactions_topic)),
        lambda raw: parse_interaction(raw, time.time() * 1000.0 + max_ahead_ms),
    )
    looked_up = enrich_batch(
        "items",
        interactions.ok,
        functools.partial(item_reader, settings, dim),
        lambda si: si[1].item_id,
        _counted,
        origin=_first,
    )
    known = op.branch("known_items", looked_up, _is_dead)
    counted = cast(Stream[Counted], known.falses)
    unknown_items = cast(Stream[DeadLetter], known.trues)

    def count(taste: Taste, c: Counted) -> None:
        i = c.interaction
        assert c.item.vector is not None, "interactions with never-embedded items are dead-lettered"
        taste.add(
            i.item_id, c.item.vector, c.item.category, c.item.price, weights[i.kind], i.event_time_ms, c.position.offset
        )

    tastes = fold_latest(
        "taste",
        op.key_on("by_user", counted, lambda c: c.interaction.user_id),
        lambda: Taste(dim, half_life_ms, settings.max_seen),
        count,
        lambda t: TasteWrite(t.version, t.to_fields()),
        Taste.state,
        Taste.from_state,
    )
    write_through(
        "users_to_redis",
        tastes,
        functools.partial(store_writer, settings, "user"),
        lambda kv: (kv[0], kv[1].version, kv[1].fields),
        shards=settings.write_shards,
        eof_patience=timedelta(seconds=settings.outage_timeout_s),
    )
    popular = decayed_top(
        "popularity",
        op.flat_map("by_category", counted, lambda c: [(c.item.category, c), (EVERYONE, c)]),
        item_getter=lambda c: c.interaction.item_id,
        weight_getter=lambda c: weights[c.interaction.kind],
        ts_getter=lambda c: c.interaction.event_time_ms / 1000.0,
        half_life=timedelta(seconds=settings.popularity_half_life_s),
        top_n=settings.popularity_top_n,
        capacity=5 * settings.popularity_top_n,
        emit_every=timedelta(milliseconds=settings.popularity_emit_ms),
    )

    # Requests: the user's vector from Redis, then one replica
    request_records = op.input("requests", flow, source(settings.requests_topic))
    requests = parse_or_dead_letter(
        "parse_requests", request_records, functools.partial(parse_recommend_request, max_k=settings.max_k)
    )
    asks = enrich_batch(
        "users",
        op.map("ask", requests.ok, _asked),
        functools.partial(user_reader, settings, dim),
        lambda a: a.request.user_id,
        _with_profile,
        origin=_ask_source,
    )
    updates: Stream[Update] = op.merge(
        "updates",
        op.map("item_updates", stored_items, lambda u: ("item", u)),
        op.map("rule_updates", rules.ok, lambda sr: ("rules", sr[1])),
        op.map("popular_updates", popular, lambda kv: ("popular", kv)),
    )
    answers = replicated(
        "catalogue",
        updates,
        asks,
        shards_for(settings.index_replicas),
        lambda a: a.request.request_id,
        functools.partial(CatalogueReplica.build, settings, dim),
        origin=_ask_source,
    )
    unusable = op.filter_map(
        "unusable_users",
        asks,
        lambda a: DeadLetter(f"user {a.request.user_id!r}: {a.problem}", "users", a.source) if a.problem else None,
    )
    dead = op.merge(
        "dead",
        catalog.dead,
        rules.dead,
        interactions.dead,
        requests.dead,
        unknown_items,
        unusable,
    )
    alarms = alarm_records(settings, request_records, slo_stage="catalogue_query")
    kafka_output(
        "out",
        op.merge("all_out", answers, op.map("dlq_records", dead, lambda d: d.to_record(settings.dlq_topic)), alarms),
        conn,
        settings.output_topics(),
        exactly_once=settings.exactly_once,
        transactional_id_prefix=settings.transactional_id_prefix,
    )
    return flow


def from_env() -> Dataflow:
    """The flow ``SLUICE_*`` variables describe, after checking Kafka, the topics, Redis and the device."""
    return flow_from_env(PersonalizeSettings, build_flow, redis=True)
