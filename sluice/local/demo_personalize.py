"""``sluice demo personalize`` (``make personalize-demo``): the personalization flow end to end on a local stack.

Starts Tansu + Redis, generates the shop (100,000 items, 5,000 users), bulk-loads
the catalogue's cached vectors into Redis (embedding them once, about five
minutes on two CPU cores, the first time), publishes 200 item updates live on
``catalog`` (the flow embeds those) and a rule set, runs
``python -m bytewax.run "dataflows.personalize:from_env()"``, sends every user's
interactions, then asks one recommendation per user and compares it with the
user's held-out next item (HitRate@10 and NDCG@10, against the popularity
ranking), then sends open-loop requests and prints the latency. Then it stops
everything.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Any

import numpy as np
import redis

from models.shopping import RecommendRequest
from models.synthetic_shopping import HOUR_MS
from operators.kafka.records import KafkaRecord
from sluice.harness.answers import AnswerCollector, Answers
from sluice.harness.loadgen import send_open_loop
from sluice.harness.probe import wait_for_answer
from sluice.local.shopping import (
    bulk_load_catalogue,
    catalogue_vectors,
    encoder_name,
    make_shop,
    producer,
    publish_catalogue,
    publish_interactions,
    publish_rules,
    request_records,
)
from sluice.local.stack import PROJECT_ROOT, stack_from_env
from sluice.processes import FlowProcesses
from sluice.settings import PersonalizeSettings

FLOW = "dataflows.personalize:from_env()"
DEMO_RULES = {
    "version": 1,
    "exclusions": {"seen_within_days": 30, "out_of_stock": True},
    "diversity": {"max_per_brand": 3},
    "boosts": {"context_category": 0.05},
}


def wait_until_recommending(settings: PersonalizeSettings, flow: FlowProcesses, timeout_s: float = 600.0) -> float:
    """Ask for one recommendation and wait for it: the replicas have loaded the index and the flow answers."""
    probe_id = f"probe-{time.time_ns()}"
    req = RecommendRequest(probe_id, "probe", 1, "home", "", "web", time.time() * 1000.0)
    return wait_for_answer(
        settings.connection(),
        KafkaRecord(settings.requests_topic, b"probe", req.to_json()),
        settings.recommendations_topic,
        lambda body: body.get("request_id") == probe_id,
        flow.alive,
        timeout_s,
    )


def wait_for_users(settings: PersonalizeSettings, count: int, flow: FlowProcesses, timeout_s: float = 600.0) -> float:
    """Wait until ``count`` user vectors are in Redis; returns the seconds it took."""
    client = redis.Redis.from_url(settings.redis_url)
    t0 = time.monotonic()
    while len(client.keys(f"{settings.redis_namespace}-user:*")) < count:
        if not flow.alive() or time.monotonic() - t0 > timeout_s:
            raise RuntimeError("the flow exited or fell behind; see .stack/personalize-logs/")
        time.sleep(0.5)
    return time.monotonic() - t0


def hit_rate(ranked: dict[str, list[str]], truth: dict[str, str], k: int = 10) -> tuple[float, float]:
    """HitRate@k and NDCG@k of ``ranked`` item lists against one true item per user.

    >>> [round(x, 4) for x in hit_rate({"u1": ["a", "b"], "u2": ["c"]}, {"u1": "b", "u2": "x"})]
    [0.5, 0.3155]
    """
    hits = ndcg = 0.0
    for user, item in truth.items():
        items = ranked.get(user, [])[:k]
        if item in items:
            hits += 1
            ndcg += 1.0 / float(np.log2(items.index(item) + 2))
    return hits / len(truth), ndcg / len(truth)


def ask_everyone(settings: PersonalizeSettings, users: list[str], k: int = 10) -> Answers:
    """One request per user (and one cold-start request for the popularity list); answers kept."""
    collector = AnswerCollector(
        connection=settings.connection(),
        topic=settings.recommendations_topic,
        id_field="request_id",
        expected=len(users) + 1,
        timeout_s=300.0,
        keep=True,
    )
    p = producer(settings)
    now = time.time() * 1000.0
    for user in [*users, "cold-start-baseline"]:
        kk = 100 if user == "cold-start-baseline" else k
        p.produce(
            settings.requests_topic,
            key=user.encode(),
            value=RecommendRequest(f"q-{user}", user, kk, "home", "", "web", now).to_json(),
        )
        p.poll(0)
    p.flush(30)
    return collector.result(timeout_s=360.0)


def quality(answers: Answers, truth: dict[str, str], seen: dict[str, set[str]]) -> dict[str, float]:
    """The flow's HitRate/NDCG and the popularity baseline's (the cold-start list minus each user's seen items)."""
    ranked = {b["user_id"]: [i["id"] for i in b["items"]] for b in answers.kept.values() if b["user_id"] in truth}
    popular = [i["id"] for i in answers.kept.get("q-cold-start-baseline", {"items": []})["items"]]
    baseline = {u: [i for i in popular if i not in seen.get(u, set())] for u in truth}
    (hr, ndcg), (hr_pop, ndcg_pop) = hit_rate(ranked, truth), hit_rate(baseline, truth)
    return {"hit_rate": hr, "ndcg": ndcg, "popularity_hit_rate": hr_pop, "popularity_ndcg": ndcg_pop}


def load(
    settings: PersonalizeSettings, users: list[str], categories: list[str], rate: float, seconds: float
) -> Answers:
    """Open-loop requests at ``rate`` for ``seconds``; the first second is not timed."""
    count = int(rate * seconds)
    collector = AnswerCollector(
        connection=settings.connection(),
        topic=settings.recommendations_topic,
        id_field="request_id",
        expected=count,
        timeout_s=seconds + 120.0,
        warmup_s=1.0,
    )
    send_open_loop(producer(settings), request_records(settings, users, categories, seed=1), rate, count)
    return collector.result(timeout_s=seconds + 180.0)


def run(args: argparse.Namespace) -> int:
    stack = stack_from_env()
    print(f"starting local stack: kafka {stack.brokers}, redis {stack.redis_url}")
    stack.start()
    settings = replace(PersonalizeSettings.from_env(), brokers=stack.brokers, redis_url=stack.redis_url)
    stack.create_topics(settings.topics())
    flow = FlowProcesses(FLOW, settings.to_env(), log_dir=PROJECT_ROOT / ".stack" / "personalize-logs")
    try:
        shop = make_shop(args.items, args.users, args.seed)
        t0 = time.monotonic()
        vectors = catalogue_vectors(shop.items, args.seed, settings)
        print(
            f"{len(shop.items):,} item vectors ready in {time.monotonic() - t0:.0f}s (cached on disk after the first run)"
        )
        bulk_load_catalogue(settings, shop.items, vectors, encoder=encoder_name(settings))
        publish_rules(settings, DEMO_RULES)
        publish_catalogue(settings, [replace(i, version=2, title=f"{i.title} (new season)") for i in shop.items[:200]])
        flow.start()
        print(f"flow recommending after {wait_until_recommending(settings, flow):.1f}s (index loaded from Redis)")
        end = time.time() * 1000.0
        events = list(shop.simulation.interactions(args.per_user, end, 48 * HOUR_MS))
        held = shop.simulation.held_out(end)
        truth = {h.user_id: h.item_id for h in held}
        publish_interactions(settings, events)
        publish_interactions(settings, held, settings.heldout_topic)  # the ground truth, for anyone to check
        print(f"{len(events):,} interactions folded into {args.users:,} user vectors in "
              f"{wait_for_users(settings, args.users, flow):.1f}s")  # fmt: skip
        seen: dict[str, set[str]] = {}
        for e in events:
            seen.setdefault(e.user_id, set()).add(e.item_id)
        figures = quality(ask_everyone(settings, sorted(truth)), truth, seen)
        categories = sorted({i.category for i in shop.items})
        answers = load(
            settings, [f"u{n}" for n in range(args.users)] + ["new-1", "new-2"], categories, args.rate, args.seconds
        )
        summarize(figures, answers, args)
    finally:
        flow.stop()
        stack.stop()
        print("stack stopped")
    return 0


def summarize(figures: dict[str, float], answers: Answers, args: argparse.Namespace) -> None:
    lat: dict[str, Any] = answers.latency_ms
    print("\n=== Sluice personalization demo ===")
    print(f"catalogue             {args.items:,} items, {args.users:,} users x {args.per_user} interactions")
    print(f"HitRate@10            {figures['hit_rate']:.3f}  (popularity {figures['popularity_hit_rate']:.3f})")
    print(f"NDCG@10               {figures['ndcg']:.3f}  (popularity {figures['popularity_ndcg']:.3f})")
    print(f"requests              {answers.answered:,} answered at {answers.rate:,.0f}/s (offered {args.rate:,.0f}/s)")
    print(
        f"end-to-end latency    p50 {lat.get('p50', float('nan')):.1f} ms  p99 {lat.get('p99', float('nan')):.1f} ms"
        f"  p99.9 {lat.get('p99.9', float('nan')):.1f} ms"
    )
    print("stages p99 (ms)       " + "  ".join(f"{k} {v.get('p99', 0):.1f}" for k, v in answers.stages_ms.items()))
    print("flags                 " + ("  ".join(f"{k} {v}" for k, v in sorted(answers.flags.items())) or "none"))
