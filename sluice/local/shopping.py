"""Feed the personalization flow: the generated catalogue, interactions, requests and rule sets.

Two ways to get a catalogue into the flow:

* **live** (:func:`publish_catalogue`): item events on the ``catalog`` topic; the flow
  embeds each one (micro-batched) and writes it through to Redis. What a real
  shop does for every change.
* **bulk** (:func:`bulk_load_catalogue`): precomputed vectors (the on-disk cache of
  :mod:`models.catalogue_vectors`) written straight into the item hashes in Redis,
  exactly as the flow's write-through would have written them; index replicas
  load them when they start. The demo and the benchmark use it to start from
  100,000 items without embedding them again on every run.

``sluice produce shop`` does either, then the interactions.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import orjson

from models.catalogue_vectors import cached_catalogue_vectors
from models.shopping import CatalogItem, Interaction, ItemRecord, RecommendRequest, text_digest
from models.synthetic_shopping import HOUR_MS, ItemFacts, ShopSimulation, make_catalogue
from operators.kafka.records import KafkaRecord
from operators.kafka.sink import CheckedProducer
from sluice.harness.loadgen import send_open_loop
from sluice.settings import PersonalizeSettings
from state.feature_store import FeatureStore

PAGES = ("home", "category", "product", "cart")
DEVICES = ("web", "ios", "android")


@dataclass(frozen=True)
class Shop:
    """A generated shop: catalogue, facts, simulated users."""

    items: list[CatalogItem]
    facts: list[ItemFacts]
    simulation: ShopSimulation


def make_shop(n_items: int, n_users: int, seed: int) -> Shop:
    catalogue = make_catalogue(n_items, seed)
    return Shop(catalogue[0], catalogue[1], ShopSimulation(catalogue, n_users, seed))


def catalogue_vectors(items: list[CatalogItem], seed: int, settings: PersonalizeSettings) -> np.ndarray:
    """The items' vectors from the encoder the flow uses, cached on disk per (seed, size, encoder)."""
    from models.text_encoder import shared_encoder

    encoder = shared_encoder(settings.device, settings.int8)
    return cached_catalogue_vectors(items, seed, encoder.name, encoder.encode, encoder.dim)


def producer(settings: PersonalizeSettings) -> CheckedProducer:
    return CheckedProducer(settings.connection().producer_config(**{"message.max.bytes": 10_000_000}))


def _flush(p: CheckedProducer, what: str) -> None:
    p.flush_or_raise(60, what)


def publish_catalogue(
    settings: PersonalizeSettings, items: Iterable[CatalogItem], vectors: np.ndarray | None = None
) -> int:
    """Item events onto the catalogue topic (keyed by item), with their vectors when given."""
    p = producer(settings)
    n = 0
    now = time.time() * 1000.0
    for n, item in enumerate(items, 1):
        if vectors is not None:
            item = replace(item, embedding=tuple(vectors[n - 1].tolist()))
        p.produce(settings.catalog_topic, key=item.item_id.encode(), value=item.to_json(sent_at_ms=now))
        p.poll(0)
    _flush(p, "catalogue events")
    return n


def encoder_name(settings: PersonalizeSettings) -> str:
    """The name (with its precision) of the encoder the flow embeds items with under ``settings``."""
    from models.text_encoder import shared_encoder

    return shared_encoder(settings.device, settings.int8).name


def bulk_load_catalogue(
    settings: PersonalizeSettings,
    items: list[CatalogItem],
    vectors: np.ndarray,
    chunk: int = 2000,
    encoder: str = "",
) -> int:
    """Write every item's hash (vector and metadata, versioned) into Redis, as the flow's write-through would.

    ``encoder``: the name of the encoder that computed ``vectors`` (:func:`encoder_name`); each hash then
    records what its vector was computed from, and the flow reuses it for updates that do not change
    the text. Leave it empty for vectors from anywhere else.
    """
    store: FeatureStore[object] = FeatureStore(
        settings.redis_url, f"{settings.redis_namespace}-item", socket_timeout_s=30.0
    )
    for start in range(0, len(items), chunk):
        batch = {}
        for item, vector in zip(items[start : start + chunk], vectors[start : start + chunk], strict=True):
            digest = text_digest(item.text(), encoder) if encoder else ""
            rec = ItemRecord(
                item.version, vector, item.category, item.brand, item.price, item.in_stock, item.deleted, digest
            )
            batch[item.item_id] = (item.version, rec.fields())
        store.put_versioned(batch)
    store.close()
    return len(items)


def publish_interactions(settings: PersonalizeSettings, events: Iterable[Interaction], topic: str | None = None) -> int:
    """Interactions (keyed by user: a user's events stay in order on one partition), as fast as possible."""
    p = producer(settings)
    n = 0
    for n, e in enumerate(events, 1):
        p.produce(topic or settings.interactions_topic, key=e.user_id.encode(), value=e.to_json())
        if n % 1000 == 0:
            p.poll(0)
    _flush(p, "interactions")
    return n


def publish_rules(settings: PersonalizeSettings, body: dict[str, object] | bytes) -> None:
    p = producer(settings)
    value = body if isinstance(body, bytes) else orjson.dumps(body)
    p.produce(settings.rules_topic, key=b"rules", value=value)
    _flush(p, "rule sets")


class Prepared:
    """One event's record, encoded when sent (its send time goes in)."""

    __slots__ = ("build",)

    def __init__(self, build: Callable[[float], KafkaRecord]) -> None:
        self.build = build

    def __call__(self, sent_ms: float) -> list[KafkaRecord]:
        return [self.build(sent_ms)]


def request_records(
    settings: PersonalizeSettings, users: list[str], categories: list[str], seed: int, k: int = 10
) -> Iterator[Prepared]:
    """Endless recommendation requests from random ``users`` (open-loop sender input)."""
    import random

    rng = random.Random(f"requests-{seed}")
    for n in itertools.count():
        user = users[rng.randrange(len(users))]
        page = PAGES[rng.randrange(len(PAGES))]
        category = categories[rng.randrange(len(categories))] if page == "category" else ""
        device = DEVICES[rng.randrange(len(DEVICES))]

        def build(sent_ms: float, n: int = n, user: str = user, page: str = page, category: str = category,
                  device: str = device) -> KafkaRecord:  # fmt: skip
            req = RecommendRequest(f"r{seed}-{n}", user, k, page, category, device, sent_ms)
            return KafkaRecord(settings.requests_topic, user.encode(), req.to_json())

        yield Prepared(build)


def interaction_records(settings: PersonalizeSettings, sim: ShopSimulation) -> Iterator[Prepared]:
    """Endless interactions, event time = send time (open-loop sender input)."""
    for e in sim.stream(0.0, 1.0):

        def build(sent_ms: float, e: Interaction = e) -> KafkaRecord:
            live = Interaction(e.user_id, e.item_id, e.kind, sent_ms)
            return KafkaRecord(settings.interactions_topic, e.user_id.encode(), live.to_json(sent_at_ms=sent_ms))

        yield Prepared(build)


def run(args: argparse.Namespace) -> int:
    """``sluice produce shop``: the catalogue (bulk into Redis or live onto the topic), then interactions."""
    settings = PersonalizeSettings.from_env()
    shop = make_shop(args.items, args.users, args.seed)
    if args.bulk:
        vectors = catalogue_vectors(shop.items, args.seed, settings)
        loaded = bulk_load_catalogue(settings, shop.items, vectors, encoder=encoder_name(settings))
        print(f"bulk-loaded {loaded} items into Redis")
    else:
        print(f"published {publish_catalogue(settings, shop.items)} catalogue events")
    end = time.time() * 1000.0
    events = shop.simulation.interactions(args.per_user, end, args.span_h * HOUR_MS)
    print(f"published {publish_interactions(settings, events)} interactions")
    if args.rate:
        report = send_open_loop(
            producer(settings), interaction_records(settings, shop.simulation), args.rate, args.count, progress=None
        )
        print(f"then {report.sent} live interactions at {report.rate:.0f}/s")
    return 0
