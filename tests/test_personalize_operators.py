"""The generic operators the personalization flow is built from, run with bytewax.testing (and real Redis where they write)."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import redis
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, TimeTestingGetter, cluster_main, run_main

from operators.decayed_top import _DecayedTopLogic, decayed_top
from operators.keyed_fold import _FoldLogic, fold_latest
from operators.replicated import replicated
from operators.shard_keys import worker_keys
from operators.write_through import Pending, WriteThroughLogic, write_through
from sluice.local.stack import LocalStack
from state.feature_store import FeatureStore
from tests.helpers import PlacementSink

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class Copy:
    """A replica that records what it applied and answers with its name and what it holds."""

    def __init__(self, name: str, resume: list[str] | None) -> None:
        self.name = name
        self.held = list(resume or [])

    def update(self, updates: list[str]) -> list[str]:
        self.held += updates
        return []

    def answer(self, queries: list[str]) -> list[str]:
        return [f"{q}@{self.name}:{','.join(self.held)}" for q in queries]

    def snapshot(self) -> list[str]:
        return list(self.held)


def test_every_replica_gets_every_update_and_each_query_one_answer():
    flow = Dataflow("replicas")
    items = [("u", "a"), ("u", "b"), ("q", "q1"), ("q", "q2"), ("q", "q3"), ("u", "c"), ("q", "q4")]
    src = op.input("in", flow, TestingSource(items, batch_size=10))
    split = op.branch("kind", src, lambda kv: kv[0] == "u")
    ups = op.map("ups", split.trues, lambda kv: kv[1])
    qs = op.map("qs", split.falses, lambda kv: kv[1])
    out: list[str] = []
    op.output("out", replicated("idx", ups, qs, 3, lambda q: q, Copy), TestingSink(out))
    run_main(flow)
    answers = {a.split("@")[0]: a.split("@")[1] for a in out}
    assert sorted(answers) == ["q1", "q2", "q3", "q4"]  # each query answered once
    # every replica applies every update, in order (merged streams have no order between them within a batch,
    # so an early query may already see a later update, never a gap)
    assert {answers[q].split(":")[1] for q in answers} <= {"a,b", "a,b,c"}
    assert answers["q4"].split(":")[1] == "a,b,c"
    assert len({answers[q].split(":")[0] for q in answers}) >= 2  # queries spread over replicas


def test_replicas_named_by_worker_keys_sit_one_on_each_worker():
    keys = worker_keys(3)
    flow = Dataflow("replicas-3")
    ups = op.input("ups", flow, TestingSource(["a"]))
    qs = op.input("qs", flow, TestingSource([f"q{i}" for i in range(60)], batch_size=10))
    placed = PlacementSink(lambda answer: answer.split("@")[1].split(":")[0])  # the replica that answered
    op.output("out", replicated("idx", ups, qs, keys, lambda q: q, Copy), placed)
    cluster_main(flow, [], 0, worker_count_per_proc=3)
    assert placed.where == {key: w for w, key in enumerate(keys)}


def test_fold_latest_emits_one_view_per_key_and_batch():
    flow = Dataflow("fold")
    src = op.input("in", flow, TestingSource([("u1", 1), ("u1", 2), ("u2", 5), ("u1", 3)], batch_size=10))
    out: list[tuple[str, int]] = []
    folded = fold_latest("sum", src, lambda: [0], lambda s, x: s.__setitem__(0, s[0] + x), lambda s: s[0], list, list)
    op.output("out", folded, TestingSink(out))
    run_main(flow)
    assert sorted(out) == [("u1", 6), ("u2", 5)]


def test_fold_latest_keeps_each_keys_state_across_batches_and_checkpoints_a_copy():
    def add(s: list[int], x: int) -> None:
        s[0] += x

    flow = Dataflow("fold-batches")
    src = op.input("in", flow, TestingSource([("u1", 1), ("u1", 2), ("u2", 5), ("u1", 3)], batch_size=1))
    out: list[tuple[str, int]] = []
    op.output("out", fold_latest("sum", src, lambda: [0], add, lambda s: s[0], list, list), TestingSink(out))
    run_main(flow)
    assert out == [("u1", 1), ("u1", 3), ("u2", 5), ("u1", 6)]  # one view per batch, the state kept between them
    logic = _FoldLogic([0], add, lambda s: s[0], list)
    logic.on_batch([2])
    snapshot = logic.snapshot()
    assert logic.on_batch([5]) == ([7], _FoldLogic.RETAIN) and snapshot == [2]  # later events leave it alone


def test_write_through_keeps_the_newest_unwritten_value_until_the_store_is_back():
    clock = TimeTestingGetter(T0)
    up = [False]
    written: list[Pending] = []

    def write(records: Pending) -> bool:
        if up[0]:
            written.append(dict(records))
        return up[0]

    logic: WriteThroughLogic[tuple[str, int]] = WriteThroughLogic(
        lambda: write, lambda kv: (kv[0], kv[1], {"v": str(kv[1])}), timedelta(seconds=1), None, clock.get
    )
    assert logic.on_batch([("a", 1), ("a", 3), ("a", 2), ("b", 1)])[0] == [("a", 1), ("a", 3), ("a", 2), ("b", 1)]
    saved = logic.snapshot()
    assert saved == {"a": (3, {"v": "3"}), "b": (1, {"v": "1"})}  # the newest per key waits, and is in the snapshot
    assert logic.notify_at() == T0 + timedelta(seconds=1)
    up[0] = True
    clock.advance(timedelta(seconds=1))
    logic.on_notify()
    assert written == [saved] and logic.snapshot() == {} and logic.notify_at() is None
    # a resumed step retries what its snapshot held at once
    resumed: WriteThroughLogic[tuple[str, int]] = WriteThroughLogic(
        lambda: write, lambda kv: (kv[0], kv[1], {}), timedelta(seconds=1), saved, clock.get
    )
    assert resumed.notify_at() == clock.now
    resumed.on_notify()
    assert written[-1] == saved


def test_write_through_retries_at_the_end_of_the_input_so_a_finished_run_leaves_the_store_complete(caplog):
    """No timer fires after the input ends: a replay whose last write met a slow store would otherwise end
    with that value only in its snapshot."""
    clock = TimeTestingGetter(T0)
    written: list[Pending] = []
    down_for = [3]  # attempts

    def write(records: Pending) -> bool:
        if down_for[0] > 0:
            down_for[0] -= 1
            return False
        written.append(dict(records))
        return True

    def logic() -> WriteThroughLogic[tuple[str, int]]:
        return WriteThroughLogic(
            lambda: write,
            lambda kv: (kv[0], kv[1], {}),
            timedelta(seconds=1),
            None,
            clock.get,
            eof_patience=timedelta(seconds=10),
            sleep=lambda s: clock.advance(timedelta(seconds=s)),
        )

    ending = logic()
    ending.on_batch([("a", 1)])  # the first attempt fails
    assert ending.on_eof() == ([], WriteThroughLogic.RETAIN)  # two more fail, the third writes
    assert written == [{"a": (1, {})}] and ending.snapshot() == {} and clock.now == T0 + timedelta(seconds=2)
    down_for[0] = 100  # a store that stays away: the run ends after the patience, the value in the snapshot
    stuck = logic()
    stuck.on_batch([("b", 2)])
    with caplog.at_level(logging.ERROR, logger="operators.write_through"):
        stuck.on_eof()
    assert stuck.snapshot() == {"b": (2, {})} and clock.now == T0 + timedelta(seconds=12)
    assert "1 values still unwritten after 10s" in caplog.text


def test_versioned_writes_never_move_a_value_backwards(stack: LocalStack):
    ns = f"wt-{uuid.uuid4().hex[:6]}"
    store: FeatureStore[object] = FeatureStore(stack.redis_url, ns)
    flow = Dataflow("write")
    values = [("k1", 5, b"five"), ("k1", 3, b"three"), ("k2", 1, b"one")]
    src = op.input("in", flow, TestingSource(values, batch_size=1))  # one runtime batch each
    out: list[tuple[str, int, bytes]] = []
    written = write_through("w", src, lambda: store.try_put_versioned, lambda x: (x[0], x[1], {"v": x[2]}), shards=2)
    op.output("out", written, TestingSink(out))
    run_main(flow)
    assert sorted(out) == sorted(values)
    client = redis.Redis.from_url(stack.redis_url)
    assert client.hgetall(f"{ns}:k1") == {b"version": b"5", b"v": b"five"}  # version 3 came later and lost
    assert store.put_versioned({"k1": (5, {"v": b"again"}), "k2": (2, {"v": b"two"})}) == 1
    assert client.hget(f"{ns}:k1", "v") == b"five" and client.hget(f"{ns}:k2", "v") == b"two"
    assert sorted(k for page in store.scan(page=1) for k, _ in page) == ["k1", "k2"]


def test_a_key_redis_refuses_is_logged_and_not_retried_while_the_others_are_written(stack: LocalStack, caplog):
    """Another program keeps a string under one key: WRONGTYPE for that key alone. Retrying it would hold
    back every other write of the shard for ever; it is counted, logged and dropped."""
    ns = f"wt-{uuid.uuid4().hex[:8]}"
    store: FeatureStore[dict[str, str]] = FeatureStore(stack.redis_url, ns)
    client = redis.Redis.from_url(stack.redis_url)
    client.set(f"{ns}:taken", b"a string")
    with caplog.at_level(logging.WARNING, logger="state.feature_store"):
        assert store.try_put_versioned({"taken": (1, {"v": b"x"}), "free": (1, {"v": b"y"})}) is True
    assert client.hgetall(f"{ns}:free") == {b"version": b"1", b"v": b"y"}
    assert client.get(f"{ns}:taken") == b"a string"
    assert (store.refused, store.failures) == (1, 0)
    assert any(
        f"Redis refused {ns}:taken" in r.getMessage() and "not retried" in r.getMessage() for r in caplog.records
    )


def _popularity(clock: TimeTestingGetter, resume=None) -> _DecayedTopLogic[tuple[str, float]]:
    """Popularity per key: top 2 by weight 1 each, half-life 60 s, emitted at most every second."""
    return _DecayedTopLogic(
        (lambda e: e[0], lambda e: 1.0, lambda e: e[1]), timedelta(seconds=60), 2, 100, timedelta(seconds=1),
        resume, clock.get,
    )  # fmt: skip


def test_popularity_is_emitted_at_most_every_interval_and_ranks_by_decayed_weight():
    clock = TimeTestingGetter(T0)
    logic = _popularity(clock)
    first, _ = logic.on_batch([("a", 0.0), ("b", 0.0), ("b", 0.0)])
    assert [[i for i, _ in r] for r in first] == [["b", "a"]]
    assert logic.on_batch([("a", 120.0), ("a", 120.0)])[0] == []  # too soon: held back
    assert logic.notify_at() == T0 + timedelta(seconds=1)
    clock.advance(timedelta(seconds=1))
    [ranking], _ = logic.on_notify()
    assert [i for i, _ in ranking] == ["a", "b"] and logic.notify_at() is None


def test_after_an_idle_gap_popularity_is_emitted_once_then_held_back_again():
    clock = TimeTestingGetter(T0)
    logic = _popularity(clock)
    assert len(logic.on_batch([("a", 0.0)])[0]) == 1
    clock.advance(timedelta(seconds=10))
    assert len(logic.on_batch([("b", 1.0)])[0]) == 1
    clock.advance(timedelta(seconds=0.1))
    assert logic.on_batch([("b", 2.0)])[0] == []  # a second after the last emission, not after the first


def test_popularity_resumes_from_its_snapshot():
    clock = TimeTestingGetter(T0)
    before = _popularity(clock)
    before.on_batch([("a", 0.0), ("b", 0.0), ("b", 0.0)])
    after = _popularity(clock, before.snapshot())
    assert after.on_batch([("a", 0.0)])[0] == [(("a", 2.0), ("b", 2.0))]


def test_decayed_top_runs_per_key_in_a_flow():
    flow = Dataflow("pop")
    events = [("shoes", ("s1", 1.0)), ("bags", ("b1", 1.0)), ("shoes", ("s2", 2.0)), ("shoes", ("s2", 3.0))]
    src = op.input("in", flow, TestingSource(events, batch_size=10))
    out: list[tuple[str, tuple[tuple[str, float], ...]]] = []
    top = decayed_top("pop", src, lambda e: e[0], lambda e: 1.0, lambda e: e[1], top_n=1)
    op.output("out", top, TestingSink(out))
    run_main(flow)
    assert {k: [i for i, _ in r] for k, r in out} == {"shoes": ["s2"], "bags": ["b1"]}
