"""The personalization flow as users run it (``python -m bytewax.run "dataflows.personalize:from_env()"``),
against the real broker and Redis: recommendations, live catalogue and rule changes, dead letters, a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import redis

from models.shopping import CatalogItem, Interaction, Kind, RecommendRequest
from models.synthetic_shopping import HOUR_MS
from operators.kafka.admin import create_topics, read_all
from operators.kafka.records import header_value
from sluice.cli import main
from sluice.local.shopping import (
    Shop,
    bulk_load_catalogue,
    encoder_name,
    make_shop,
    publish_catalogue,
    publish_interactions,
    publish_rules,
)
from sluice.local.stack import LocalStack
from sluice.processes import FlowProcesses, init_recovery
from sluice.settings import PersonalizeSettings
from state.checkpoints import latest_state, summarize
from tests.helpers import produce

FLOW = "dataflows.personalize:from_env()"
Body = dict[str, Any]


def _settings(stack: LocalStack, **overrides: Any) -> PersonalizeSettings:
    tag = uuid.uuid4().hex[:8]
    s = PersonalizeSettings(
        brokers=stack.brokers,
        redis_url=stack.redis_url,
        catalog_topic=f"catalog-{tag}",
        interactions_topic=f"interactions-{tag}",
        requests_topic=f"requests-{tag}",
        rules_topic=f"rules-{tag}",
        recommendations_topic=f"recs-{tag}",
        catalog_changes_topic=f"indexed-{tag}",
        heldout_topic=f"heldout-{tag}",
        dlq_topic=f"pdlq-{tag}",
        redis_namespace=f"shop-{tag}",
        topic_partitions=2,
        device="cpu",
        ann_nlist=8,
        ann_train_at=300,
        popularity_emit_ms=200.0,
    )
    s = replace(s, **overrides)
    create_topics(s.connection(), s.topics())
    return s


def _wait(
    settings: PersonalizeSettings,
    topic: str,
    done: Callable[[list[Any]], bool],
    flow: FlowProcesses,
    timeout_s: float = 120,
) -> list[Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        msgs = read_all(settings.connection(), topic, 5)
        bodies = msgs if topic == settings.dlq_topic else [orjson.loads(m.value() or b"{}") for m in msgs]
        if done(bodies) or time.monotonic() > deadline:
            return bodies
        assert flow.alive(), "the flow died"
        time.sleep(0.3)


def _ask(settings: PersonalizeSettings, flow: FlowProcesses, user: str, k: int = 10, category: str = "") -> Body:
    request_id = f"r-{uuid.uuid4().hex[:8]}"
    req = RecommendRequest(request_id, user, k, "category" if category else "home", category, "web", time.time() * 1000)
    produce(settings, [(user.encode(), req.to_json())], settings.requests_topic)
    bodies = _wait(
        settings, settings.recommendations_topic, lambda bs: any(b["request_id"] == request_id for b in bs), flow
    )
    [body] = [b for b in bodies if b["request_id"] == request_id]
    return body


@pytest.fixture(scope="module")
def running(
    stack: LocalStack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[PersonalizeSettings, FlowProcesses, Shop]]:
    """One flow; 600 items published live on the catalogue topic (embedded by the flow), 60 users' interactions."""
    settings = _settings(stack)
    shop = make_shop(600, 60, seed=11)
    publish_catalogue(settings, shop.items)
    flow = FlowProcesses(FLOW, settings.to_env(), log_dir=tmp_path_factory.mktemp("personalize-logs")).start()
    changes = _wait(settings, settings.catalog_changes_topic, lambda bs: len(bs) >= len(shop.items), flow)
    assert len({c["item_id"] for c in changes}) == len(shop.items), "the catalogue was not embedded within 120 s"
    publish_interactions(settings, shop.simulation.interactions(12, time.time() * 1000, 2 * HOUR_MS))
    client = redis.Redis.from_url(settings.redis_url)
    users = [f"{settings.redis_namespace}-user:u{i}" for i in range(60)]

    def folded() -> int:  # users whose twelve interactions are all in their stored vector
        return sum(int(client.hget(u, "count") or 0) == 12 for u in users)

    deadline = time.monotonic() + 240  # generous: a loaded CI box has taken more than 60 s here
    while folded() < len(users):
        if not flow.alive():
            raise RuntimeError("the personalization flow exited while folding the interactions")
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {folded()} of {len(users)} users folded all 12 interactions within 240 s")
        time.sleep(0.3)
    yield settings, flow, shop
    flow.stop()


def test_a_known_user_gets_similar_unseen_items_and_their_vector_is_in_redis(running):
    settings, flow, shop = running
    client = redis.Redis.from_url(settings.redis_url)
    stored = client.hgetall(f"{settings.redis_namespace}-user:u3")
    assert len(stored[b"vector"]) == 384 * 4 and int(stored[b"count"]) == 12
    # versioned by the position of the user's last interaction (a user's interactions share one partition)
    positions = [
        m.offset() or 0 for m in read_all(settings.connection(), settings.interactions_topic) if m.key() == b"u3"
    ]
    assert len(positions) == 12 and int(stored[b"version"]) == max(positions)
    seen = {item for item, _ in orjson.loads(stored[b"seen"])}
    body = _ask(settings, flow, "u3")
    ids = [i["id"] for i in body["items"]]
    assert len(ids) == 10 and not set(ids) & seen  # seen items are excluded by the default rules
    assert body["fallback"] is False and "cold_start" not in body["flags"]
    assert all(i["reasons"][0] in {"similar"} or i["reasons"][0].startswith("popular") for i in body["items"])
    assert [i["score"] for i in body["items"]] == sorted((i["score"] for i in body["items"]), reverse=True)
    assert set(body["latency_ms"]) == {"queue", "user_lookup", "to_index", "search", "rank", "total"}
    assert body["index_items"] == len([i for i in shop.items if i.searchable]) + sum(not i.in_stock for i in shop.items)
    # the taste points where the user shops: most recommendations come from their favourite categories
    favourite = set(list(orjson.loads(stored[b"affinity"]))[:2])
    categories = {i.item_id: i.category for i in shop.items}
    assert sum(categories[i] in favourite for i in ids) >= 5


def test_a_recommendation_carries_the_trace_of_its_request(running):
    settings, flow, _ = running
    parent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    req = RecommendRequest("r-traced", "u5", 5, "home", "", "web", time.time() * 1000)
    produce(settings, [(b"u5", req.to_json())], settings.requests_topic, headers=[("traceparent", parent)])
    _wait(settings, settings.recommendations_topic, lambda bs: any(b["request_id"] == "r-traced" for b in bs), flow)
    [msg] = [
        m
        for m in read_all(settings.connection(), settings.recommendations_topic)
        if orjson.loads(m.value() or b"{}")["request_id"] == "r-traced"
    ]
    assert header_value(msg.headers(), "traceparent") == parent


def test_a_cold_start_user_gets_what_is_popular_in_the_context_category(running):
    settings, flow, shop = running
    body = _ask(settings, flow, "someone-new", category="books")
    assert body["fallback"] is True and body["flags"] == ["cold_start"]
    assert body["items"] and all(i["reasons"][0] == "popular_in_books" for i in body["items"])
    categories = {i.item_id: i.category for i in shop.items}
    assert {categories[i["id"]] for i in body["items"]} == {"books"}


def test_rule_sets_apply_live_and_a_bad_one_is_dead_lettered_while_the_previous_stays(running):
    settings, flow, shop = running
    brands = {i.item_id: i.brand for i in shop.items}
    publish_rules(settings, {"version": 5, "diversity": {"max_per_brand": 1}})
    deadline = time.monotonic() + 60
    while (body := _ask(settings, flow, "u4"))["rule_set_version"] != 5:
        assert time.monotonic() < deadline, "the rule set never arrived"
    ids = [i["id"] for i in body["items"]]
    assert len(ids) == 10 and len({brands[i] for i in ids}) == 10  # a full top 10, at most one item per brand
    publish_rules(settings, b'{"version": 6, "diversity": {"max_per_brnad": 1}}')
    dead = _wait(settings, settings.dlq_topic, lambda ms: any(b"max_per_brnad" in (m.value() or b"") for m in ms), flow)
    [letter] = [m for m in dead if b"max_per_brnad" in (m.value() or b"")]
    assert dict(letter.headers())["dlq.reason"] == b"unknown key(s) in diversity: max_per_brnad"
    assert _ask(settings, flow, "u4")["rule_set_version"] == 5


def test_a_deleted_or_sold_out_item_leaves_the_results(running):
    settings, flow, shop = running
    first = _ask(settings, flow, "u5")
    top, second = first["items"][0]["id"], first["items"][1]["id"]
    item = {i.item_id: i for i in shop.items}
    publish_catalogue(settings, [CatalogItem(top, 2, deleted=True), replace(item[second], version=2, in_stock=False)])
    _wait(
        settings,
        settings.catalog_changes_topic,
        lambda bs: {(b["item_id"], b["version"]) for b in bs} >= {(top, 2), (second, 2)},
        flow,
    )
    after = [i["id"] for i in _ask(settings, flow, "u5")["items"]]
    # still a full top 10, although the rule set of the test before (one item per brand) is in force: when the
    # similar items run out of brands, the list is filled from what is popular
    assert len(after) == 10 and top not in after and second not in after


def test_an_update_that_keeps_the_text_keeps_the_vector_and_a_new_text_gets_a_new_one(running):
    """The flow embeds a catalogue update only when its text changed. Two items are bulk-loaded with a vector
    the encoder never makes, marked as computed by the flow's encoder from their text: a price change keeps
    that vector, a new title gets the encoder's; both versions reach the index and Redis."""
    settings, flow, shop = running
    client = redis.Redis.from_url(settings.redis_url)
    same, renamed = (replace(i, item_id=f"bulk-{i.item_id}") for i in shop.items[40:42])
    sentinel = np.zeros((2, 384), dtype=np.float32)
    sentinel[:, 0] = 1.0
    bulk_load_catalogue(settings, [same, renamed], sentinel, encoder=encoder_name(settings))
    publish_catalogue(
        settings,
        [replace(same, version=7, price=same.price + 1), replace(renamed, version=7, title=f"{renamed.title} pro")],
    )
    _wait(
        settings,
        settings.catalog_changes_topic,
        lambda bs: {(b["item_id"], b["version"]) for b in bs} >= {(same.item_id, 7), (renamed.item_id, 7)},
        flow,
    )
    after = {i.item_id: client.hgetall(f"{settings.redis_namespace}-item:{i.item_id}") for i in (same, renamed)}
    assert after[same.item_id][b"version"] == b"7" and after[same.item_id][b"price"] == repr(same.price + 1).encode()
    assert after[same.item_id][b"vector"] == sentinel[0].tobytes()  # kept: no encoder call
    assert after[renamed.item_id][b"vector"] != sentinel[1].tobytes()  # embedded
    assert after[renamed.item_id][b"text_digest"] != after[same.item_id][b"text_digest"]


def test_bad_input_is_dead_lettered_with_reasons_and_the_flow_goes_on(running):
    settings, flow, shop = running
    produce(settings, [(b"x", b"not json"), (b"x", orjson.dumps({"request_id": "r", "user_id": "u1", "k": 0}))],
            settings.requests_topic)  # fmt: skip
    in_microseconds = time.time() * 1e6  # decayed to this time, every count of u1 and of popularity would be 0
    produce(settings, [
        (b"u1", orjson.dumps({"user_id": "u1", "item_id": "no-such-item", "kind": "view", "time": 1})),
        (b"u1", orjson.dumps({"user_id": "u1", "item_id": shop.items[0].item_id, "kind": "view", "time": in_microseconds})),
    ], settings.interactions_topic)  # fmt: skip
    bad_vector = CatalogItem("odd", 1, "Odd item", "", "books", embedding=(1.0, 0.0))
    produce(settings, [(b"odd", bad_vector.to_json())], settings.catalog_topic)
    client = redis.Redis.from_url(settings.redis_url)
    client.hset(f"{settings.redis_namespace}-user:broken", mapping={"version": "1", "vector": b"\0" * 40})
    body = _ask(settings, flow, "broken", category="toys")
    assert body["fallback"] is True and body["flags"][0] == "user_vector_invalid"
    assert set(body["flags"]) <= {"user_vector_invalid", "filled_from_popularity"}  # a thin category is filled
    assert body["user_problem"] == "user vector has 10 dimensions, expected 384"
    wanted = [
        "not valid JSON",
        "k must be an integer from 1 to 100",
        "unknown item 'no-such-item': it is not in the catalogue",
        "(SLUICE_MAX_EVENT_AHEAD_S ahead of the clock)",
        "embedding has 2 dimensions, expected 384",
        "user 'broken': user vector has 10 dimensions, expected 384",
    ]

    def reasons(ms: list[Any]) -> list[str]:
        return [dict(m.headers())["dlq.reason"].decode() for m in ms]

    dead = _wait(settings, settings.dlq_topic, lambda ms: all(any(w in r for r in reasons(ms)) for w in wanted), flow)
    assert all(any(w in r for r in reasons(dead)) for w in wanted), reasons(dead)
    assert _ask(settings, flow, "u6")["items"]  # still answering


def test_a_view_of_an_item_the_catalogue_did_not_have_yet_counts_once_redriven(running, monkeypatch, capsys):
    """The classic redrive: an interaction arrives before its item and is dead-lettered; once the catalogue has
    the item, ``sluice dlq redrive`` sends it back and the user's taste counts it, once however often it runs."""
    settings, flow, shop = running
    monkeypatch.setenv("SLUICE_BROKERS", settings.brokers)
    client = redis.Redis.from_url(settings.redis_url)
    user = f"{settings.redis_namespace}-user:u9"
    before = int(client.hget(user, "count") or 0)
    publish_interactions(settings, [Interaction("u9", "late-item", Kind.PURCHASE, time.time() * 1000)])
    reason = "unknown item 'late-item'"

    def rejected(ms: list[Any]) -> bool:
        return any(reason in str(dict(m.headers())["dlq.reason"]) for m in ms)

    assert rejected(_wait(settings, settings.dlq_topic, rejected, flow))
    assert int(client.hget(user, "count") or 0) == before  # not counted while the item is unknown

    late = replace(shop.items[0], item_id="late-item", version=1, title="A late arrival")
    publish_catalogue(settings, [late])
    _wait(settings, settings.catalog_changes_topic, lambda bs: any(b["item_id"] == "late-item" for b in bs), flow)
    redrive = ["dlq", "redrive", "--topic", settings.dlq_topic, "--reason", reason]
    assert main(redrive) == 0 and "redrove 1 dead letter:" in capsys.readouterr().out
    deadline = time.monotonic() + 60
    while int(client.hget(user, "count") or 0) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert int(client.hget(user, "count") or 0) == before + 1
    assert "late-item" in {item for item, _ in orjson.loads(client.hget(user, "seen") or b"[]")}
    assert main(redrive) == 0 and "redrove nothing" in capsys.readouterr().out  # at most once
    sent = [
        m for m in read_all(settings.connection(), settings.interactions_topic) if b"late-item" in (m.value() or b"")
    ]
    assert len(sent) == 2 and int(client.hget(user, "count") or 0) == before + 1  # the original and one resend


def test_a_retrier_sends_a_view_back_until_its_item_arrives_and_an_input_runs_out_of_attempts(
    running, monkeypatch, capsys
):
    """``redrive --every``, an automatic retry for a transient cause: the retrier sends a view of an item the
    catalogue gets only later back each second; the flow rejects it again (attempt 1) until the item arrives,
    then counts it once. A view of an item that never arrives is left once it has had its attempts."""
    settings, flow, shop = running
    monkeypatch.setenv("SLUICE_BROKERS", settings.brokers)
    client = redis.Redis.from_url(settings.redis_url)
    user = f"{settings.redis_namespace}-user:u8"
    before = int(client.hget(user, "count") or 0)
    now = time.time() * 1000
    publish_interactions(
        settings, [Interaction("u8", "later-item", Kind.CLICK, now), Interaction("u7", "never-item", Kind.VIEW, now)]
    )

    def letters(item: str, attempt: int) -> Callable[[list[Any]], bool]:
        def there(ms: list[Any]) -> bool:
            return any(
                item.encode() in (m.value() or b"") and int(dict(m.headers()).get("redrive.attempt", b"0")) == attempt
                for m in ms
            )

        return there

    assert letters("later-item", 0)(_wait(settings, settings.dlq_topic, letters("later-item", 0), flow))
    retrier = subprocess.Popen(
        [sys.executable, "-m", "sluice", "dlq", "redrive", "--topic", settings.dlq_topic, "--reason", "later-item",
         "--every", "1", "--max-attempts", "30"],
        env={**os.environ, "SLUICE_BROKERS": settings.brokers}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert letters("later-item", 1)(
            _wait(settings, settings.dlq_topic, letters("later-item", 1), flow)
        )  # sent back once, rejected again
        assert int(client.hget(user, "count") or 0) == before
        publish_catalogue(settings, [replace(shop.items[1], item_id="later-item", version=1)])
        _wait(settings, settings.catalog_changes_topic, lambda bs: any(b["item_id"] == "later-item" for b in bs), flow)
        deadline = time.monotonic() + 60
        while int(client.hget(user, "count") or 0) == before and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2.5)  # two more cycles: nothing is sent again once the view counted
    finally:
        retrier.send_signal(signal.SIGTERM)  # it finishes its cycle and exits 0
        out, _ = retrier.communicate(timeout=60)
    assert retrier.returncode == 0 and "stopped after" in out, out
    assert int(client.hget(user, "count") or 0) == before + 1, out  # counted once
    sent = [
        m for m in read_all(settings.connection(), settings.interactions_topic) if b"later-item" in (m.value() or b"")
    ]
    heads = [dict(m.headers() or []) for m in sent]
    assert [h.get("redrive.attempt") for h in heads] == [None, *(b"%d" % n for n in range(1, len(sent)))]
    first = f"{sent[0].topic()}/{sent[0].partition()}/{sent[0].offset()}".encode()
    assert {h["redrive.of"] for h in heads[1:]} == {first}  # every resend names the input as it first arrived
    assert "redrove 1 dead letter" in out

    redrive = ["dlq", "redrive", "--topic", settings.dlq_topic, "--reason", "never-item", "--max-attempts", "1"]
    assert letters("never-item", 0)(_wait(settings, settings.dlq_topic, letters("never-item", 0), flow))
    assert main(redrive) == 0 and "redrove 1 dead letter" in capsys.readouterr().out
    assert letters("never-item", 1)(_wait(settings, settings.dlq_topic, letters("never-item", 1), flow))
    assert main(redrive) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{settings.dlq_topic}: redrove nothing\n") and "out of attempts (--max-attempts) 1" in out


def _user_hashes(settings: PersonalizeSettings) -> dict[Any, dict[Any, Any]]:
    client = redis.Redis.from_url(settings.redis_url)
    return {k: client.hgetall(k) for k in client.keys(f"{settings.redis_namespace}-user:*")}


def test_kill_9_and_resume_gives_the_user_state_and_redis_vectors_of_a_crash_free_run(
    stack: LocalStack, tmp_path: Path
):
    """Two runs over the same interactions, each writing to its own Redis namespace: one crash-free, one killed
    twice and resumed from its checkpoints, the last time rescaled to two processes with two index replicas.
    User hashes and checkpointed tastes must be equal.

    The crashed run's input arrives in three parts, one per life, and each life is killed once it has
    committed a checkpoint, so every resume starts from a checkpoint (not from scratch) and has input of
    its own left to read. The crash-free run reads the same records, published at once, from a topic of
    its own (same keys and order, so the same offsets, which the stored versions are)."""
    shop = make_shop(300, 80, seed=12)
    vectors = np.random.default_rng(0).normal(size=(300, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    # small batches: many epochs. A Redis read that times out dead-letters its interactions (an outage, tested
    # elsewhere), which would make the runs differ for a reason other than the crash: on CI's loaded two cores
    # writes have timed out at the default 500 ms, so this test gives Redis 5 s.
    base = _settings(stack, source_batch_size=40, redis_timeout_ms=5000.0)
    events = list(shop.simulation.interactions(40, time.time() * 1000, 5 * HOUR_MS))
    parts = [
        events[: len(events) // 3],
        events[len(events) // 3 : 2 * len(events) // 3],
        events[2 * len(events) // 3 :],
    ]
    clean_topic = f"{base.interactions_topic}-clean"
    create_topics(base.connection(), {clean_topic: base.topic_partitions})
    publish_interactions(base, events, topic=clean_topic)

    def one_run(name: str, topic: str, kills: int) -> tuple[PersonalizeSettings, Path]:
        settings = replace(base, redis_namespace=f"{base.redis_namespace}-{name}", interactions_topic=topic)
        bulk_load_catalogue(settings, shop.items, vectors)
        recovery = tmp_path / name / "recovery"
        init_recovery(recovery)

        def start(s: PersonalizeSettings = settings, life: str = "", processes: int = 1) -> FlowProcesses:
            return FlowProcesses(
                FLOW, s.to_env(), processes=processes, recovery_dir=recovery, log_dir=tmp_path / name / life
            ).start()

        for life in range(kills):
            publish_interactions(settings, parts[life])
            committed = summarize(recovery, "interactions").committed_epoch or 0
            flow = start(life=f"life-{life}")
            deadline = time.monotonic() + 180
            while (summarize(recovery, "interactions").committed_epoch or 0) <= committed:
                assert flow.alive() and time.monotonic() < deadline  # until this life checkpointed once
                time.sleep(0.05)
            flow.kill()  # SIGKILL
        rescaled = kills > 0  # the crashed run resumes on two processes, one index replica each
        if rescaled:
            publish_interactions(settings, parts[kills])
        last = start(
            replace(settings, stop_at_end=True, index_replicas=2 if rescaled else 1),
            life="last",
            processes=2 if rescaled else 1,
        )
        assert all(c == 0 for c in last.wait(180))
        if rescaled:  # each life after the first resumed from the checkpoint of the one before, not from scratch
            resumed = [epoch for _, _, epoch, _ in sorted(summarize(recovery, "interactions").executions)]
            assert len(resumed) == kills + 1 and 1 < resumed[1] < resumed[2], resumed
        return settings, recovery

    with ThreadPoolExecutor(1) as pool:  # the crash-free run beside the crashed one: namespaces of their own
        clean_run = pool.submit(one_run, "clean", clean_topic, 0)
        runs = {"crashed": one_run("crashed", base.interactions_topic, 2), "clean": clean_run.result()}
    clean, crashed = (_user_hashes(runs[n][0]) for n in ("clean", "crashed"))
    strip = {k.split(b":", 1)[1]: v for k, v in clean.items()}
    assert len(strip) == 80
    assert strip == {k.split(b":", 1)[1]: v for k, v in crashed.items()}  # vectors, versions, seen, affinities
    for user in ("u0", "u17", "u79"):
        a = latest_state(runs["clean"][1], "personalize.taste.fold", user)
        b = latest_state(runs["crashed"][1], "personalize.taste.fold", user)
        assert isinstance(a, dict) and isinstance(b, dict)
        assert np.array_equal(a.pop("vector"), b.pop("vector")) and a == b


def test_while_redis_is_down_requests_fall_back_and_taste_writes_wait_for_it(running, stack: LocalStack):
    settings, flow, shop = running
    client = redis.Redis.from_url(settings.redis_url)
    key = f"{settings.redis_namespace}-user:u8"
    item = next(i for i in shop.items if i.searchable)

    def interact(expected_count: int | None) -> None:
        event = {"user_id": "u8", "item_id": item.item_id, "kind": "purchase", "time": time.time() * 1000}
        produce(settings, [(b"u8", orjson.dumps(event))], settings.interactions_topic)
        deadline = time.monotonic() + 30
        while expected_count is not None and int(client.hget(key, "count") or 0) != expected_count:
            assert time.monotonic() < deadline, "the taste never reached Redis"
            time.sleep(0.2)

    before = int(client.hget(key, "count") or 0)
    interact(before + 1)  # the item is now in the flow's item cache
    time.sleep(1.5)  # past the user cache's TTL
    stack.pause("redis")
    try:
        body = _ask(settings, flow, "u8", category="books")
        assert body["fallback"] is True and body["flags"][0] == "user_store_down"
        assert set(body["flags"]) <= {"user_store_down", "filled_from_popularity"}  # a thin category is filled
        assert body["items"] and any(i["reasons"][0] == "popular_in_books" for i in body["items"])
        # books' popularity, filled from everything's when books holds fewer than k
        assert {i["reasons"][0] for i in body["items"]} <= {"popular_in_books", "popular"}
        interact(None)  # counted while Redis is down: its write waits in the write-through step
        time.sleep(2.0)
    finally:
        stack.resume("redis")
    deadline = time.monotonic() + 30
    while int(client.hget(key, "count") or 0) != before + 2:  # the waiting write is retried, nothing else sent
        assert time.monotonic() < deadline, "the taste counted while Redis was down never reached it"
        time.sleep(0.2)
    assert _ask(settings, flow, "u8")["fallback"] is False


def test_the_replica_ranks_lazily_read_hits_exactly_as_the_full_ranking_and_fills_from_popularity(stack: LocalStack):
    """The request path without the broker (a replica on the real Redis, loaded from updates): the
    early-stopping ranking over lazily built hits gives what ranking every hit gives, and when the rules
    leave too few the fill from popularity re-reads the same hits."""
    from dataflows.personalize import Ask, CatalogueReplica, ItemUpdate
    from models.rules import RuleSet, Shopper, parse_rule_set, rank
    from models.shopping import ItemRecord
    from models.user_taste import UserProfile
    from operators.kafka.records import Position, SourceRecord

    settings = _settings(stack)
    dim, rng = 16, np.random.default_rng(5)
    replica = CatalogueReplica("r0", settings, dim, None)
    assert replica.index.count == 0  # nothing in this namespace yet
    vectors = rng.normal(size=(600, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    updates = [
        ("item", ItemUpdate(
            f"i{n}",
            ItemRecord(1, vectors[n], f"c{n % 5}", f"b{n % 7}", 10.0 + n % 50, n % 11 != 0, False),
            Position("catalog", 0, n), 0.0, 0.0,
        ))
        for n in range(600)
    ]  # fmt: skip
    replica.update(updates)
    replica.update([("popular", ("c1", tuple((f"i{n}", 100.0 - n) for n in range(1, 200, 5))))])

    def asks(k: int, category: str) -> list[Ask]:
        out = []
        for u in range(24):
            vector = rng.normal(size=dim).astype(np.float32)
            seen = {f"i{n}": 0.0 for n in rng.integers(0, 600, 8)}
            profile = UserProfile(vector / np.linalg.norm(vector), 1, seen, {"c1": 0.6, "c3": 0.2}, 30.0)
            req = RecommendRequest(f"q{u}", f"u{u}", k, "home", category, "web", 0.0)
            out.append(Ask(req, SourceRecord("requests", 0, u, None, None), 0.0, profile))
        return out

    def expected(ask: Ask, filled: bool) -> list[str]:
        p = ask.profile
        assert p is not None and p.vector is not None
        fetch = min(settings.max_fetch, ask.request.k * settings.overfetch + len(p.seen))
        found = (replica._candidate(i, s, "similar") for i, s in replica.index.search(p.vector[None, :], fetch)[0])
        every = [c for c in found if c is not None]
        shopper = Shopper(p.seen, p.affinity, p.avg_price, ask.request.category, ask.request.sent_at_ms)
        pool = every + replica.popular_in(ask.request.category or "c1") if filled else every
        return [r.item_id for r in rank(pool, ask.request.k, replica.rules, shopper)[0]]

    rule_sets = [
        RuleSet(),
        parse_rule_set(b'{"version": 1, "diversity": {"max_per_brand": 2, "max_per_category": 3},'
                       b' "boosts": {"context_category": 0.3, "category_affinity": 0.5}}'),
        parse_rule_set(b'{"version": 2, "diversity": {"max_per_category": 1}}'),  # 5 categories: k=8 cannot fill
    ]  # fmt: skip
    fills = 0
    for rules in rule_sets:
        replica.rules = rules
        for k, category in ((5, ""), (8, "c2")):
            batch = asks(k, category)
            for ask, record in zip(batch, replica.answer(batch), strict=True):
                body = orjson.loads(record.value or b"")
                filled = "filled_from_popularity" in body["flags"]
                fills += filled
                assert [item["id"] for item in body["items"]] == expected(ask, filled)
    assert fills > 0  # the fill path was exercised
    replica.rules = RuleSet()
    one_id = [replace(a, request=replace(a.request, request_id="retried")) for a in asks(5, "")]
    for ask, record in zip(one_id, replica.answer(one_id), strict=True):  # each user gets their own results
        assert [item["id"] for item in orjson.loads(record.value or b"")["items"]] == expected(ask, False)

    # a cold-start user in a category with fewer popular items than asked for: filled from overall popularity
    everyone = tuple((f"i{n}", 300.0 - n) for n in range(1, 300, 3))
    replica.update([("popular", ("c4", (("i4", 5.0),))), ("popular", ("*", everyone))])
    cold = Ask(
        RecommendRequest("cold", "new-user", 5, "home", "c4", "web", 0.0),
        SourceRecord("r", 0, 99, None, None),
        0.0,
        None,
    )
    body = orjson.loads(replica.answer([cold])[0].value or b"")
    assert body["flags"] == ["cold_start", "filled_from_popularity"] and body["fallback"] is True
    assert "i4" in [i["id"] for i in body["items"]] and len(body["items"]) == 5
    assert {r for i in body["items"] for r in i["reasons"]} >= {"popular", "popular_in_c4"}
