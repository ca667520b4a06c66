import math
import pickle
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, TimeTestingGetter, cluster_main, run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from operators import event_windows
from operators.event_windows import (
    Features,
    SlidingAggregates,
    WindowSpec,
    WindowStatus,
    _BucketLogic,
    _seconds_of,
    _StepConfig,
    _windower,
    sliding_features,
)
from operators.probes import StageProbe

SPEC = WindowSpec(windows=(("1m", 60.0), ("1h", 3600.0)), allowed_lateness_s=30.0)


def _ok(feats: Features | None) -> Features:
    assert feats is not None, "event was unexpectedly late"
    return feats


def test_counts_sums_distinct_and_gap_on_known_sequence():
    agg = SlidingAggregates(SPEC)
    assert agg.add(1000.0, 10.0, "a") == (1, 10, 1, 10, 1, 3600)
    assert agg.add(1010.0, 20.0, "b") == (2, 30, 2, 30, 2, 10)
    assert agg.add(1050.0, 5.0, "a") == (3, 35, 3, 35, 2, 40)
    # 1000 and 1010 fall out of (1070-60, 1070]; all stay in the hour
    assert agg.add(1070.0, 1.0, "c") == (2, 6, 4, 36, 3, 20)
    # two hours later: only this event counts, the gap is capped
    assert agg.add(1070.0 + 7200, 2.0, "a") == (1, 2, 1, 2, 1, 3600)


def test_out_of_order_event_within_lateness_counts_only_earlier_events():
    agg = SlidingAggregates(SPEC)
    agg.add(100.0, 1.0, "a")
    agg.add(120.0, 2.0, "b")
    # arrives after 120 but happened at 110: sees 100 (and itself), not 120
    assert agg.add(110.0, 4.0, "c") == (2, 5, 2, 5, 2, 10)
    # the event at 120 now sees 100, 110 and itself when a later one asks
    assert _ok(agg.add(121.0, 0.5, "d"))[:2] == (4, 7.5)


def test_late_event_is_refused_and_changes_nothing():
    agg = SlidingAggregates(SPEC)
    agg.add(1000.0, 1.0, "a")
    assert agg.add(1000.0 - 31, 1.0, "b") is None
    assert _ok(agg.add(1001.0, 1.0, "c"))[:2] == (2, 2)


def test_the_lateness_boundary_and_what_eviction_keeps_for_late_events():
    agg = SlidingAggregates(SPEC)  # horizon 3,600 s, lateness 30 s: events are kept 3,630 s
    agg.add(1.0, 1.0, "a", event_id="e1")
    agg.add(3625.0, 1.0, "b")
    # 3,600 is allowed (newest 3,625 minus 30 is 3,595) and its hour (0, 3600] still holds the event at 1
    assert _ok(agg.add(3600.0, 1.0, "c"))[2] == 2
    assert agg.add(3595.0, 1.0, "d") is not None and agg.add(3594.9, 1.0, "d") is None  # exactly at the bound: in
    assert agg.seen("e1") and SlidingAggregates(SPEC, pickle.loads(agg.pickled())).seen(
        "e1"
    )  # ids survive a checkpoint
    agg.add(10_000.0, 1.0, "e")
    assert not agg.seen("e1") and agg.times == [10_000.0]  # evicted events' ids go with them


def test_a_key_keeps_at_most_max_events_per_key_and_peek_leaves_the_extras_in_step():
    agg = SlidingAggregates(WindowSpec(max_events_per_key=3))
    for t in range(5):
        agg.add(float(t), 1.0, "m", extra=f"x{t}")
    assert agg.times == [2.0, 3.0, 4.0] and agg.triples == [2.0, 1.0, "x2", 3.0, 1.0, "x3", 4.0, 1.0, "x4"]
    agg.peek(2.5, 9.0, "m")  # inserted in the middle, then taken out again: every column it touched
    assert agg.recent(4.0, 3) == [(2.0, 1.0, "x2"), (3.0, 1.0, "x3"), (4.0, 1.0, "x4")]
    assert (len(agg.times), len(agg.values), len(agg.tags), len(agg.ids), len(agg.triples)) == (3, 3, 3, 3, 9)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 20_000), st.floats(0.01, 100)), min_size=1, max_size=200))
def test_matches_brute_force_and_state_stays_bounded(events):
    agg = SlidingAggregates(SPEC)
    seen: list[tuple[float, float]] = []
    for t, v in sorted(events):
        feats = _ok(agg.add(t, v, "m"))
        seen.append((t, v))
        in_1m = [x for x in seen if t - 60 < x[0] <= t]
        assert feats[0] == len(in_1m)
        assert abs(feats[1] - sum(x[1] for x in in_1m)) < 1e-6
        # nothing older than the horizon plus lateness is kept
        assert all(x >= agg.newest - SPEC.horizon_s - SPEC.allowed_lateness_s for x in agg.times)


class _Oracle:
    """The window's definition, written plainly: every held event in a sorted list, each feature a scan."""

    def __init__(self, spec: WindowSpec) -> None:
        self.spec, self.newest = spec, float("-inf")
        self.held: list[tuple[float, float, str, str, str]] = []  # (time, value, tag, id, extra)

    def features(self, t: float, upto: list) -> tuple[float, ...]:
        spec, out = self.spec, []
        for _, w in spec.windows:
            inside = [e[1] for e in upto if e[0] > t - w]
            out += [float(len(inside)), float(sum(inside))]
        out.append(float(len({e[2] for e in upto if e[0] > t - spec.distinct_window_s})))
        gap = t - upto[-2][0] if len(upto) > 1 else spec.gap_cap_s
        return (*out, min(gap, spec.gap_cap_s))

    def peek(self, t: float, v: float, tag: str) -> tuple[float, ...]:
        return self.features(t, [e for e in self.held if e[0] <= t] + [(t, v, tag, "", "")])

    def add(self, t: float, v: float, tag: str, event_id: str, extra: str) -> tuple[float, ...] | None:
        spec = self.spec
        if math.isnan(t) or t < self.newest - spec.allowed_lateness_s:
            return None
        i = sum(1 for e in self.held if e[0] <= t)  # after the events at the same time: they came first
        self.held.insert(i, (t, v, tag, event_id, extra))
        self.newest = max(self.newest, t)
        feats = self.features(t, self.held[: i + 1])
        keep_from = self.newest - spec.horizon_s - spec.allowed_lateness_s
        self.held = [e for e in self.held if e[0] > keep_from][-spec.max_events_per_key :]
        return feats

    def recent(self, t: float, n: int) -> list[tuple[float, float, str]]:
        return [(e[0], e[1], e[4]) for e in self.held if e[0] <= t][-n:]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.integers(0, 400).map(float), st.integers(0, 4000).map(lambda x: x / 10), st.just(math.nan)),
            st.sampled_from([0.1, 1 / 3, 2.25, 7.0, 1e16, -0.0]),
            st.sampled_from("abc"),
        ),
        min_size=1,
        max_size=80,
    ),
    st.sampled_from([(("a", 10.0), ("b", 60.0)), (("a", 30.0),), (("a", 5.0), ("b", 20.0), ("c", 90.0))]),
    st.sampled_from([20.0, 60.0, 45.0]),
    st.integers(1, 12),
    st.sampled_from([0.0, 15.0]),
)
def test_every_feature_and_recent_event_equals_the_plain_definition_bit_for_bit(
    events, windows, distinct_s, max_events, lateness
):
    """Out-of-order, late and NaN-dated events, sums that depend on their order, eviction by age and by count,
    windows holding one event or all of them, a distinct span equal to a window or to none, peeks at an empty
    window: the fast paths give exactly what the definition gives, and the pickled state is the layout
    (times, values, tags, ids, extras, newest) that recovery stores hold."""
    spec = WindowSpec(
        windows=windows, distinct_window_s=distinct_s, gap_cap_s=50.0, allowed_lateness_s=lateness,
        max_events_per_key=max_events,
    )  # fmt: skip
    agg, oracle = SlidingAggregates(spec), _Oracle(spec)
    for k, (t, v, tag) in enumerate(events):
        if not math.isnan(t):  # repr: -0.0 == 0.0, but a sum of [-0.0] is 0.0
            assert repr(agg.peek(t, v, tag)) == repr(oracle.peek(t, v, tag))
        event_id, extra = f"e{k}", tag.upper() + str(k)
        assert repr(agg.add(t, v, tag, event_id, extra)) == repr(oracle.add(t, v, tag, event_id, extra))
        if not math.isnan(t):
            assert agg.recent(t, 4) == oracle.recent(t, 4)
            assert agg.recent_events_with(t, v, "x", 3) == [x for r in oracle.recent(t, 2) for x in r] + [t, v, "x"]
        assert [agg.seen(f"e{j}") for j in range(k + 1)] == [
            any(e[3] == f"e{j}" for e in oracle.held) for j in range(k + 1)
        ]
    columns = [list(c) for c in zip(*oracle.held, strict=True)] or [[]] * 5
    assert pickle.loads(agg.pickled()) == (*columns[:3], columns[3], columns[4], oracle.newest)
    resumed = SlidingAggregates.unpickled(spec, agg.pickled())
    assert (resumed.triples, resumed.times, resumed.tags) == (agg.triples, agg.times, agg.tags)


def test_a_nan_dated_event_is_late_and_never_held():
    agg = SlidingAggregates(SPEC)
    _ok(agg.add(10.0, 1.0, "m", "e1"))
    assert agg.add(math.nan, 1.0, "m", "e2") is None
    assert (
        agg.times == [10.0] and not agg.seen("e2") and _ok(agg.add(20.0, 1.0, "m"))[5] == 10.0
    )  # gap from 10, not nan


def _run(items, idle=timedelta(hours=1), **kwargs):
    flow = Dataflow("win")
    src = op.input("in", flow, TestingSource(items))
    keyed = op.key_on("key", src, lambda e: e[0])
    win = sliding_features(
        "w", keyed, lambda e: e[1], lambda e: e[2], lambda e: e[3], spec=SPEC, idle_timeout=idle, **kwargs
    )
    out: list = []
    op.output("out", win, TestingSink(out))
    run_main(flow)
    return [(k, w.event, w.features, w.status) for k, w in out]


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["a", "b", "c", "d", "e"]), st.floats(0, 500)), min_size=1, max_size=60),
    st.sampled_from([0, 1, 2, 64]),
    st.integers(1, 7),
)
def test_any_bucket_count_gives_each_key_the_features_of_its_own_window(events, buckets, batch_size):
    items = [(k, t, 1.0, f"m{i % 3}") for i, (k, t) in enumerate(events)]
    expected: dict[str, list] = {}
    per_key: dict[str, SlidingAggregates] = {}
    for k, t, v, m in items:
        agg = per_key.setdefault(k, SlidingAggregates(SPEC))
        feats = agg.add(t, v, m)
        expected.setdefault(k, []).append(feats if feats is not None else agg.peek(t, v, m))
    flow = Dataflow("win")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(items, batch_size=batch_size)), lambda e: e[0])
    out: list = []
    win = sliding_features("w", keyed, lambda e: e[1], lambda e: e[2], lambda e: e[3], spec=SPEC, buckets=buckets)
    op.output("out", win, TestingSink(out))
    run_main(flow)
    got: dict[str, list] = {}
    for k, w in out:  # keys of different buckets may leave in another order; each key's events keep theirs
        got.setdefault(k, []).append(w.features)
    assert got == expected


def test_operator_keeps_keys_apart_and_decides_late_events_from_the_window_without_adding_them():
    items = [
        ("c1", 0.0, 5.0, "m1"),
        ("c2", 1.0, 7.0, "m1"),
        ("c1", 10.0, 5.0, "m2"),
        ("c1", 5.0 - 40, 1.0, "m3"),
        ("c1", 11.0, 1.0, "m1"),
    ]
    out = _run(items)
    feats = {(k, e[1]): f for k, e, f, _ in out}
    assert feats[("c1", 10.0)][:2] == (2, 10)
    assert feats[("c2", 1.0)][:2] == (1, 7)
    late = [(e, f, s) for _, e, f, s in out if s == WindowStatus.LATE]
    assert late == [(("c1", -35.0, 1.0, "m3"), (1.0, 1.0, 1.0, 1.0, 1.0, 3600.0), WindowStatus.LATE)]
    assert feats[("c1", 11.0)][:2] == (3, 11)  # the late event was not added


def test_an_event_dated_far_ahead_does_not_block_the_key():
    now = datetime.now(UTC).timestamp()
    items = [
        ("c1", now - 20, 5.0, "m1"),
        ("c1", now + 10 * 365 * 86400, 9.0, "m1"),  # ten years ahead
        ("c1", now - 10, 5.0, "m1"),
    ]
    out = _run(items, max_ahead=timedelta(hours=1))
    assert [s for *_, s in out] == [WindowStatus.OK, WindowStatus.AHEAD, WindowStatus.OK]
    assert out[2][2][:2] == (2, 10)  # the real events still count; the future one was never added


def test_a_resent_event_id_is_counted_once():
    items = [("c1", 0.0, 5.0, "m1", "e1"), ("c1", 1.0, 5.0, "m1", "e2"), ("c1", 0.0, 5.0, "m1", "e1")]
    out = _run(items, id_getter=lambda e: e[4])
    assert [s for *_, s in out] == [WindowStatus.OK, WindowStatus.OK, WindowStatus.DUPLICATE]
    assert out[2][2] is None


@pytest.mark.parametrize("buckets", [64, 0])
def test_idle_keys_expire_and_start_fresh(buckets: int):
    items = [("c1", 0.0, 5.0, "m1"), TestingSource.PAUSE(timedelta(milliseconds=300)), ("c1", 10.0, 5.0, "m1")]
    out = _run(items, idle=timedelta(milliseconds=50), buckets=buckets)
    # the state of c1 was dropped during the pause: the second event sees only itself
    assert [f[0] for _, _, f, _ in out] == [1, 1]
    out = _run(items, idle=timedelta(hours=1), buckets=buckets)
    assert [f[0] for _, _, f, _ in out] == [1, 2]


@pytest.mark.parametrize("buckets", [64, 0])
def test_a_key_with_events_when_its_first_expiry_fires_is_kept_and_expires_once_idle(buckets: int):
    # the expiry is armed once (at the first event + timeout); events keep coming past that time, so when it
    # fires the key must be re-armed, not dropped; once the events stop for the timeout, it is dropped
    pause = TestingSource.PAUSE(timedelta(milliseconds=50))
    items: list = []
    for i in range(24):  # 24 events 50 ms apart: 1.2 s, twice the timeout (a gap would have to be 12x longer)
        items += [("c1", float(i), 5.0, "m1"), pause]
    items += [TestingSource.PAUSE(timedelta(milliseconds=1500)), ("c1", 24.0, 5.0, "m1")]
    out = _run(items, idle=timedelta(milliseconds=600), buckets=buckets)
    assert [f[0] for _, _, f, _ in out] == [*range(1, 25), 1]


def _logic(
    clock: TimeTestingGetter, resume=None, buckets: int = 4, idle_s: float = 60.0, checkpointed: bool = True
) -> _BucketLogic:
    cfg: _StepConfig[tuple[str, float, float, str]] = _StepConfig(
        SPEC, lambda e: e[1], lambda e: e[2], lambda e: e[3], None, None, 0, float("inf"), idle_s,
        _seconds_of(clock.get), StageProbe("w"), buckets, "SLUICE_WINDOW_BUCKETS", checkpointed,
    )  # fmt: skip
    return _BucketLogic(cfg, _windower(cfg), resume)


def _events(logic: _BucketLogic, *events: tuple[str, float, float, str]) -> list:
    out, done = logic.on_batch([[(e[0], e) for e in events]])
    assert done == StatefulBatchLogic.RETAIN
    return [w.features for _, w in out[0]]


def test_the_expiry_is_armed_once_per_idle_period_and_drops_only_the_idle_keys():
    clock = TimeTestingGetter(datetime(2030, 1, 1, tzinfo=UTC))
    logic = _logic(clock)
    _events(logic, ("c1", 0.0, 5.0, "m1"), ("c2", 0.0, 5.0, "m1"))
    first = logic.notify_at()
    assert first is not None  # armed: 60 s (test clock) from now, as a delay on the system clock
    assert timedelta(seconds=59) < first - datetime.now(UTC) <= timedelta(seconds=60)
    clock.advance(timedelta(seconds=30))
    _events(logic, ("c1", 30.0, 5.0, "m1"))
    assert logic.notify_at() is None  # still armed: Bytewax keeps the first schedule
    clock.advance(timedelta(seconds=30))  # the first schedule fires: c2 is idle, c1 had an event 30 s ago
    _, done = logic.on_notify()
    assert done == StatefulBatchLogic.RETAIN and set(logic.seen_at) == {"c1"}
    again = logic.notify_at()  # armed again, for the earliest key left
    assert again is not None and timedelta(seconds=29) < again - datetime.now(UTC) <= timedelta(seconds=30)
    assert _events(logic, ("c2", 61.0, 5.0, "m1"))[0][0] == 1  # c2 starts fresh
    clock.advance(timedelta(seconds=61))  # now every key is idle for the whole timeout
    _, done = logic.on_notify()
    assert done == StatefulBatchLogic.DISCARD


def test_a_resumed_bucket_gives_the_features_an_uninterrupted_one_gives():
    clock = TimeTestingGetter(datetime(2030, 1, 1, tzinfo=UTC))
    events = [(f"c{i % 3}", float(i), float(i), f"m{i % 2}") for i in range(12)]
    straight = _logic(clock)
    expected = _events(straight, *events)
    first = _logic(clock)
    got = _events(first, *events[:7])
    snap = pickle.loads(pickle.dumps(first.snapshot()))  # as Bytewax stores it
    resumed = _logic(clock, snap)
    assert resumed.live == {}  # nothing unpickled until a key has an event
    got += _events(resumed, *events[7:])
    assert got == expected


def test_without_a_recovery_store_a_snapshot_is_empty_and_the_windows_go_on():
    """Bytewax drops the snapshots of a flow run without a store unread: nothing is pickled for them."""
    clock = TimeTestingGetter(datetime(2030, 1, 1, tzinfo=UTC))
    kept, unkept = _logic(clock), _logic(clock, checkpointed=False)
    events = [("c1", 0.0, 5.0, "m1"), ("c2", 0.0, 5.0, "m1"), ("c1", 1.0, 7.0, "m2")]
    assert _events(kept, *events[:2]) == _events(unkept, *events[:2])
    assert kept.snapshot()[2].keys() == {"c1", "c2"} and unkept.snapshot()[2] == {}
    assert _events(kept, events[2]) == _events(unkept, events[2]) == [(2.0, 12.0, 2.0, 12.0, 2.0, 1.0)]
    assert unkept.snapshot()[2] == {} and not unkept.dirty and unkept.pickled == {}


def test_a_snapshot_pickles_only_the_keys_that_changed_and_drops_expired_ones():
    clock = TimeTestingGetter(datetime(2030, 1, 1, tzinfo=UTC))
    logic = _logic(clock)
    _events(logic, ("c1", 0.0, 5.0, "m1"), ("c2", 0.0, 5.0, "m1"))
    _, _, first = logic.snapshot()
    _events(logic, ("c1", 1.0, 5.0, "m1"))
    _, _, second = logic.snapshot()
    assert second["c2"] is first["c2"]  # c2 had no event: its bytes are reused
    assert second["c1"] != first["c1"]
    clock.advance(timedelta(seconds=61))
    logic.notify_at()
    logic.on_notify()
    assert logic.snapshot()[2] == {}
    assert set(second) == {"c1", "c2"}  # an earlier snapshot is a copy: it keeps what it held


def test_a_large_bucket_warns_once_naming_the_setting_and_its_size_is_kept_exactly(monkeypatch, caplog):
    monkeypatch.setattr(event_windows, "LARGE_BUCKET_BYTES", 1_000)
    monkeypatch.setattr(_BucketLogic, "warned", False)
    clock = TimeTestingGetter(datetime(2030, 1, 1, tzinfo=UTC))
    logic = _logic(clock)
    _events(logic, *[(f"c{i}", 0.0, 5.0, "m1") for i in range(5)])
    logic.snapshot()
    assert logic.size == sum(map(len, logic.pickled.values())) < 1_000 and not caplog.records
    _events(logic, *[(f"c{i}", 1.0, 5.0, "m1") for i in range(20)])
    logic.snapshot()
    assert logic.size == sum(map(len, logic.pickled.values())) > 1_000
    assert not caplog.records  # large, but every key in it changed: nothing is written in vain
    _events(logic, ("c0", 2.0, 5.0, "m1"))
    logic.snapshot()  # one key of twenty changed: the rest is rewritten as it was
    _events(logic, ("c1", 2.0, 5.0, "m1"))
    logic.snapshot()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "SLUICE_WINDOW_BUCKETS=0" in warnings[0] and "(20 keys)" in warnings[0]
    clock.advance(timedelta(seconds=61))  # every key expires: nothing is left to count
    logic.notify_at()
    logic.on_notify()
    assert logic.size == 0


def test_a_store_written_with_another_bucket_count_is_refused_with_both_counts():
    clock = TimeTestingGetter(datetime(2030, 1, 1, tzinfo=UTC))
    logic = _logic(clock, buckets=4)
    _events(logic, ("c1", 0.0, 5.0, "m1"))
    with pytest.raises(
        ValueError, match="holds its keys in 4 buckets .* this flow in 8 .*: set SLUICE_WINDOW_BUCKETS=4"
    ):
        _logic(clock, logic.snapshot(), buckets=8)


@pytest.mark.parametrize("buckets", [16, 0])
def test_a_flow_resumed_on_more_workers_gives_every_event_the_features_an_uncrashed_run_gives(
    tmp_path: Path, buckets: int
):
    items = [(f"c{i % 5}", float(i), float(i % 7), f"m{i % 3}") for i in range(40)]

    def run(source_items: list, recovery: RecoveryConfig | None, buckets: int = buckets, workers: int = 1) -> list:
        flow = Dataflow("win")
        keyed = op.key_on("key", op.input("in", flow, TestingSource(source_items, batch_size=3)), lambda e: e[0])
        win = sliding_features(
            "w", keyed, lambda e: e[1], lambda e: e[2], lambda e: e[3], spec=SPEC, buckets=buckets,
            buckets_setting="SLUICE_WINDOW_BUCKETS",
        )  # fmt: skip
        out: list = []
        op.output("out", win, TestingSink(out))
        if workers == 1:
            run_main(flow, epoch_interval=timedelta(0), recovery_config=recovery)
        else:
            cluster_main(
                flow, [], 0, epoch_interval=timedelta(0), recovery_config=recovery, worker_count_per_proc=workers
            )
        return [(w.event, w.features) for _, w in out]

    expected = dict(run(items, None))
    init_db_dir(tmp_path, 1)
    recovery = RecoveryConfig(str(tmp_path))
    crashed = items[:20] + [TestingSource.ABORT()] + items[20:]
    before = run(crashed, recovery)
    after = run(crashed, recovery, workers=3)  # resumes after the last epoch it finished, on 3 workers
    assert 0 < len(before) < len(items) and 0 < len(after) < len(items)  # it resumed rather than starting over
    for event, features in before + after:  # events re-run after the crash get the same features again
        assert features == expected[event], event
    assert {e for e, _ in before + after} == set(items)
    with pytest.raises(Exception, match=f"set SLUICE_WINDOW_BUCKETS={buckets} to resume it"):
        run(items, recovery, buckets=4)  # the store's keys are laid out otherwise: refused, not re-windowed


def test_a_key_expired_before_the_snapshot_is_not_in_it_and_a_notification_waits_an_eighth_of_the_timeout():
    clock = TimeTestingGetter(datetime(2030, 1, 1, tzinfo=UTC))
    logic = _logic(clock)
    _events(logic, ("c1", 0.0, 5.0, "m1"))
    logic.notify_at()
    clock.advance(timedelta(seconds=59))
    _events(logic, ("c2", 0.0, 5.0, "m1"))
    clock.advance(timedelta(seconds=1))
    logic.on_notify()  # c1 is idle for the timeout, with its event not yet in a snapshot
    assert logic.snapshot()[2].keys() == {"c2"}
    due = logic.notify_at()  # c2 is due in 59 s: armed for then
    assert due is not None and timedelta(seconds=58) < due - datetime.now(UTC) <= timedelta(seconds=59)
    clock.advance(timedelta(seconds=59))
    _events(logic, ("c3", 0.0, 5.0, "m1"))
    logic.on_notify()  # c2 expires; c3 is fresh
    _events(logic, ("c4", 0.0, 5.0, "m1"))
    clock.advance(timedelta(seconds=1))
    assert set(logic.seen_at) == {"c3", "c4"}
    logic.seen_at["c3"] -= 59.5  # as if c3 were due in half a second: the bucket still waits idle/8 = 7.5 s
    due = logic.notify_at()
    assert due is not None and timedelta(seconds=7) < due - datetime.now(UTC) <= timedelta(seconds=7.5)


def test_a_negative_bucket_count_is_refused_naming_the_setting():
    flow = Dataflow("win")
    keyed = op.key_on("key", op.input("in", flow, TestingSource([("c1", 0.0, 1.0, "m")])), lambda e: e[0])
    with pytest.raises(ValueError, match="SLUICE_WINDOW_BUCKETS must be 0 .* got -1"):
        sliding_features(
            "w", keyed, lambda e: e[1], lambda e: e[2], lambda e: e[3], buckets=-1,
            buckets_setting="SLUICE_WINDOW_BUCKETS",
        )  # fmt: skip


def test_a_key_restored_from_its_pickled_state_continues_as_if_never_stopped():
    events = [(1000.0, 10.0, "a", "e1"), (1010.0, 20.0, "b", "e2"), (1005.0, 1.0, "c", "e3"), (1020.0, 2.0, "a", "e4")]
    straight, first = SlidingAggregates(SPEC), SlidingAggregates(SPEC)
    expected = [straight.add(*e[:3], event_id=e[3]) for e in events]
    got = [first.add(*e[:3], event_id=e[3]) for e in events[:2]]
    restored = SlidingAggregates(SPEC, pickle.loads(first.pickled()))
    assert restored.seen("e1") and not restored.seen("e3")
    got += [restored.add(*e[:3], event_id=e[3]) for e in events[2:]]
    assert got == expected


@pytest.mark.parametrize("workers", [2, 3])
def test_a_batching_step_placed_beside_the_buckets_runs_each_key_on_its_windows_worker(workers):
    """On a real cluster: where each key's windowed event is written (its bucket's worker) and where its
    micro-batch result is written (its shard's worker) agree for every key with ``beside_buckets``, and
    not with the hash placement, which sends some events to another worker in between."""
    from operators.batching import Placement, by_hash
    from operators.microbatch import micro_batch
    from operators.shard_keys import worker_keys
    from tests.helpers import PlacementSink

    def where(placement: Placement) -> tuple[dict[str, int], dict[str, int]]:
        items = [(f"card-{i}", float(i), 1.0, "m") for i in range(200)]
        flow = Dataflow("beside")
        keyed = op.key_on("key", op.input("in", flow, TestingSource(items, batch_size=50)), lambda e: e[0])
        win = sliding_features("w", keyed, lambda e: e[1], lambda e: e[2], lambda e: e[3], spec=SPEC, buckets=16)
        at_window = PlacementSink(lambda kw: kw[0])
        op.output("at_window", win, at_window)
        batched = micro_batch(
            "mb", win, lambda b: b, lambda kw: kw[0], shards=worker_keys(workers), placement=placement
        )
        at_batch = PlacementSink(lambda kw: kw[0])
        op.output("at_batch", batched, at_batch)
        cluster_main(flow, [], 0, worker_count_per_proc=workers)
        assert len(at_window.where) == len(at_batch.where) == 200
        return at_window.where, at_batch.where

    window, batch = where(event_windows.beside_buckets(16))
    assert batch == window
    window, batch = where(by_hash)
    assert any(batch[k] != w for k, w in window.items())
