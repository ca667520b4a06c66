from collections.abc import Iterator

import bytewax.operators as op
import pytest
import redis
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from models.fraud_features import CardProfile, parse_profile
from operators.enrich import enrich_batch
from sluice.processes import free_port
from state.feature_store import READ_CHUNK, FeatureStore, Profile, RedisUnavailable, Unreadable, check_redis


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_batch_read_is_one_round_trip_and_cached(stack):
    store: FeatureStore[Profile] = FeatureStore(stack.redis_url, "fs-test", ttl_s=60)
    store.put_many({f"c{i}": {"avg_amount": i, "home_country": "US"} for i in range(50)})
    got, down = store.get_many([f"c{i}" for i in range(50)] + ["unknown"])
    assert not down and store.round_trips == 1
    assert got["c7"] == {"avg_amount": "7", "home_country": "US"} and got["unknown"] is None
    again, _ = store.get_many(["c7", "c8"])
    assert store.round_trips == 1 and again["c8"] == {"avg_amount": "8", "home_country": "US"}  # from the cache
    assert (store.hits, store.misses) == (2, 51)


def test_a_card_with_several_events_in_a_batch_is_fetched_once(stack):
    store: FeatureStore[Profile] = FeatureStore(stack.redis_url, "fs-dup", ttl_s=60)
    got, _ = store.get_many(["x", "x", "x"])
    assert got == {"x": None} and (store.hits, store.misses, store.round_trips) == (0, 1, 1)


def test_no_profile_is_cached_only_briefly(stack):
    clock = FakeClock()
    store: FeatureStore[Profile] = FeatureStore(stack.redis_url, "fs-neg", ttl_s=60, negative_ttl_s=1.0, clock=clock)
    assert store.get_many(["late-card"])[0]["late-card"] is None
    store.put_many({"late-card": {"avg_amount": 3}})  # the profile is loaded just after the first lookup
    clock.now += 0.5
    assert store.get_many(["late-card"])[0]["late-card"] is None  # still the cached miss
    clock.now += 0.6
    assert store.get_many(["late-card"])[0]["late-card"] == {"avg_amount": "3"}  # seen within a second


def test_cache_entries_expire(stack):
    store: FeatureStore[Profile] = FeatureStore(stack.redis_url, "fs-ttl", ttl_s=0.0)
    store.put_many({"a": {"v": 1}})
    store.get_many(["a"])
    store.put_many({"a": {"v": 2}})
    assert store.get_many(["a"])[0]["a"] == {"v": "2"} and store.round_trips == 2


def test_a_bad_key_is_unreadable_on_its_own_and_never_opens_the_circuit(stack):
    client = redis.Redis.from_url(stack.redis_url)
    client.set("pk:wrongtype", "a plain string, not a hash")
    client.hset("pk:binary", mapping={"avg_amount": b"\xff\xfe"})
    client.hset("pk:text", mapping={"avg_amount": "lots"})
    client.hset("pk:good", mapping={"avg_amount": "12.5"})
    store: FeatureStore[CardProfile] = FeatureStore(stack.redis_url, "pk", parse=parse_profile, failures_to_open=1)
    got, down = store.get_many(["wrongtype", "binary", "text", "good"])
    assert not down and not store.circuit_open
    assert isinstance(got["wrongtype"], Unreadable) and "WRONGTYPE" in got["wrongtype"].reason
    assert isinstance(got["binary"], Unreadable) and "UTF-8" in got["binary"].reason
    assert isinstance(got["text"], Unreadable) and "not a number" in got["text"].reason
    assert isinstance(got["good"], CardProfile) and got["good"].avg_amount == 12.5


def test_an_unreadable_profile_is_retried_as_soon_as_a_missing_one(stack):
    """A repaired profile is used within the negative TTL, not after the full TTL of a good one."""
    client = redis.Redis.from_url(stack.redis_url)
    client.set("fix:c1", "a plain string, not a hash")
    clock = FakeClock()
    store: FeatureStore[CardProfile] = FeatureStore(
        stack.redis_url, "fix", parse=parse_profile, ttl_s=60, negative_ttl_s=1.0, clock=clock
    )
    assert isinstance(store.get_many(["c1"])[0]["c1"], Unreadable)
    client.delete("fix:c1")
    client.hset("fix:c1", mapping={"avg_amount": "7"})
    clock.now += 1.1
    repaired = store.get_many(["c1"])[0]["c1"]
    assert isinstance(repaired, CardProfile) and repaired.avg_amount == 7.0


def test_the_circuit_opens_after_consecutive_failures_and_probes_again():
    clock = FakeClock()
    store: FeatureStore[Profile] = FeatureStore(
        f"redis://127.0.0.1:{free_port()}/0", "x", failures_to_open=3, retry_after_s=5, clock=clock
    )
    for expected_failures in (1, 2, 3):
        got, down = store.get_many(["a", "b"])
        assert down and got == {"a": None, "b": None} and store.failures == expected_failures
    assert store.circuit_open
    store.get_many(["a"])
    assert store.failures == 3  # open: no attempt
    clock.now += 5.1
    store.get_many(["a"])
    assert store.failures == 4 and store.circuit_open  # half-open probe failed: open again


def test_only_failures_in_a_row_open_the_circuit(stack):
    clock = FakeClock()
    store: FeatureStore[Profile] = FeatureStore(
        f"redis://127.0.0.1:{free_port()}/0", "x", failures_to_open=2, retry_after_s=5, clock=clock
    )
    unreachable, reachable = store._client, redis.Redis.from_url(stack.redis_url)
    for client in (unreachable, reachable, unreachable):  # a success between two failures
        store._client = client
        store.get_many(["a"])
        clock.now += 2.0  # past the cached miss of the success
    assert store.failures == 2 and not store.circuit_open
    store.get_many(["a"])
    assert store.failures == 3 and store.circuit_open


def test_operator_does_one_round_trip_per_runtime_batch(stack):
    FeatureStore(stack.redis_url, "op-test").put_many({f"k{i}": {"x": i} for i in range(10)})
    stores: list[FeatureStore[Profile]] = []

    def factory():
        stores.append(FeatureStore(stack.redis_url, "op-test", ttl_s=0, negative_ttl_s=0))
        return stores[-1].get_many

    flow = Dataflow("lookup")
    items = [f"k{i % 12}" for i in range(60)]
    out: list = []
    op.output(
        "o",
        enrich_batch("l", op.input("in", flow, TestingSource(items, batch_size=20)), factory, str),
        TestingSink(out),
    )
    run_main(flow)
    assert len(out) == 60 and stores[0].round_trips == 3
    assert dict((k, p) for k, p, _ in out)["k3"] == {"x": "3"}
    assert all(p is None for k, p, _ in out if k in ("k10", "k11"))


def test_a_batch_larger_than_one_read_is_read_in_chunks_in_order(stack):
    """Reads go :data:`READ_CHUNK` keys per script call, each key's reply in its place."""
    n = 2 * READ_CHUNK + 7
    store: FeatureStore[Profile] = FeatureStore(stack.redis_url, "fs-chunks", ttl_s=60)
    store.put_many({f"c{i}": {"v": i} for i in range(0, n, 2)})  # every other one has a profile
    got, down = store.get_many([f"c{i}" for i in range(n)])
    assert not down and store.round_trips == 3 and store.misses == n
    assert [got[f"c{i}"] for i in range(6)] == [{"v": "0"}, None, {"v": "2"}, None, {"v": "4"}, None]
    assert got[f"c{n - 1}"] == {"v": str(n - 1)}


def test_reads_go_on_after_redis_forgets_its_scripts(stack):
    """A restarted Redis has no scripts: the read script is loaded again, and nothing is reported down."""
    store: FeatureStore[Profile] = FeatureStore(stack.redis_url, "fs-flush", ttl_s=0.0, negative_ttl_s=0.0)
    store.put_many({"a": {"v": 1}})
    assert store.get_many(["a"])[0]["a"] == {"v": "1"}
    redis.Redis.from_url(stack.redis_url).script_flush()
    got, down = store.get_many(["a"])
    assert got["a"] == {"v": "1"} and not down and store.failures == 0


def test_a_failed_call_loses_only_its_own_keys_and_those_after_it(stack):
    """Keys of the calls before a failure are served and cached; the rest are answered "store down"."""

    class FailsAfterOneCall(FeatureStore[Profile]):
        def _reads(self, keys: list[str]) -> Iterator[list[object]]:
            for replies in super()._reads(keys):
                yield replies  # then the next call goes to a Redis that is not there
                self._client = redis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)

    n = READ_CHUNK + 10
    store = FailsAfterOneCall(stack.redis_url, "fs-partial", ttl_s=60, failures_to_open=5)
    store.put_many({f"c{i}": {"v": i} for i in range(n)})
    got, down = store.get_many([f"c{i}" for i in range(n)])
    assert down and store.failures == 1 and (store.misses, store.down) == (READ_CHUNK, 10)
    assert got["c0"] == {"v": "0"} and got[f"c{READ_CHUNK - 1}"] == {"v": str(READ_CHUNK - 1)}
    assert got[f"c{READ_CHUNK}"] is None  # not read: the caller's fallback
    assert store.get_many(["c0"])[0]["c0"] == {"v": "0"} and store.hits == 1  # the first call's keys were cached


def test_a_redis_user_that_may_not_run_scripts_is_refused_at_start_in_one_line(stack):
    admin = redis.Redis.from_url(stack.redis_url)
    admin.acl_setuser("no-scripts", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@all", "-@scripting"])
    try:
        url = stack.redis_url.replace("redis://", "redis://no-scripts:pw@")
        with pytest.raises(RedisUnavailable, match="does not let the SLUICE_REDIS_URL user run scripts"):
            check_redis(url, 2.0)
        check_redis(stack.redis_url, 2.0)  # the default user may
    finally:
        admin.acl_deluser("no-scripts")
