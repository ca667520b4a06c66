import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from operators.enrich import enrich_batch
from sluice.processes import free_port
from state.feature_store import FeatureStore


def test_batch_read_is_one_round_trip_and_cached(stack):
    store = FeatureStore(stack.redis_url, "fs-test", ttl_s=60)
    store.put_many({f"c{i}": {"avg_amount": i, "home_country": "US"} for i in range(50)})
    got, down = store.get_many([f"c{i}" for i in range(50)] + ["unknown"])
    assert not down and store.round_trips == 1
    assert got["c7"] == {"avg_amount": "7", "home_country": "US"} and got["unknown"] is None
    again, _ = store.get_many(["c7", "c8", "unknown"])
    assert store.round_trips == 1 and again["c8"] == {
        "avg_amount": "8",
        "home_country": "US",
    }  # served from the TTL cache


def test_cache_entries_expire(stack):
    store = FeatureStore(stack.redis_url, "fs-ttl", ttl_s=0.0)
    store.put_many({"a": {"v": 1}})
    store.get_many(["a"])
    store.put_many({"a": {"v": 2}})
    assert store.get_many(["a"])[0]["a"] == {"v": "2"} and store.round_trips == 2


def test_unreachable_redis_gives_fallback_and_backs_off():
    store = FeatureStore(f"redis://127.0.0.1:{free_port()}/0", "x", retry_after_s=60)
    got, down = store.get_many(["a", "b"])
    assert down and got == {"a": None, "b": None} and store.failures == 1
    store.get_many(["a"])
    assert store.failures == 1  # circuit open: no second attempt yet


def test_operator_does_one_round_trip_per_runtime_batch(stack):
    FeatureStore(stack.redis_url, "op-test").put_many({f"k{i}": {"x": i} for i in range(10)})
    stores: list[FeatureStore] = []

    def factory():
        stores.append(FeatureStore(stack.redis_url, "op-test", ttl_s=0))
        return stores[-1]

    flow = Dataflow("lookup")
    items = [f"k{i % 12}" for i in range(60)]
    out: list = []
    op.output(
        "o",
        enrich_batch("l", op.input("in", flow, TestingSource(items, batch_size=20)), lambda: factory().get_many, str),
        TestingSink(out),
    )
    run_main(flow)
    assert len(out) == 60 and stores[0].round_trips == 3
    assert dict((k, p) for k, p, _ in out)["k3"] == {"x": "3"}
    assert all(p is None for k, p, _ in out if k in ("k10", "k11"))
