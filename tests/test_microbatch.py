from datetime import UTC, datetime, timedelta

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, TimeTestingGetter, cluster_main, run_main
from hypothesis import given
from hypothesis import strategies as st

from operators.batching import BatchBuffer, pick_shard
from operators.microbatch import MicroBatchLogic, call_batch, micro_batch
from operators.shard_keys import worker_keys, worker_of
from tests.helpers import PlacementSink

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _run(items, max_batch, max_wait, shards=1):
    calls: list[list[int]] = []

    def fn(batch):
        calls.append(list(batch))
        return [x * 10 for x in batch]

    flow = Dataflow("mb")
    src = op.input("in", flow, TestingSource(items, batch_size=100))
    out: list[int] = []
    op.output(
        "out", micro_batch("mb", src, fn, str, max_batch=max_batch, max_wait=max_wait, shards=shards), TestingSink(out)
    )
    run_main(flow)
    return calls, out


def test_flushes_by_size_then_at_eof():
    calls, out = _run(list(range(7)), max_batch=3, max_wait=timedelta(hours=1))
    assert [len(c) for c in calls] == [3, 3, 1]
    assert sorted(out) == [x * 10 for x in range(7)]


def test_a_large_input_batch_flushes_every_full_batch_at_once_and_keeps_the_rest():
    calls: list[list[int]] = []

    def fn(batch: list[int]) -> list[int]:
        calls.append(list(batch))
        return [x * 10 for x in batch]

    logic: MicroBatchLogic[int, int] = MicroBatchLogic(fn, 3, timedelta(hours=1), None, TimeTestingGetter(T0).get)
    assert logic.on_batch(list(range(7))) == ([x * 10 for x in range(6)], MicroBatchLogic.RETAIN)
    assert calls == [[0, 1, 2], [3, 4, 5]] and logic.snapshot() == [6]  # not one batch now and the rest later


def test_a_batch_function_must_give_exactly_one_result_per_item():
    for wrong in (lambda xs: [*xs, 0], lambda xs: xs[1:]):
        with pytest.raises(ValueError, match="results for"):
            call_batch(wrong, [1, 2])


def test_flushes_by_deadline_in_a_running_flow():
    items = [1, 2, TestingSource.PAUSE(timedelta(milliseconds=300)), 3, 4]
    calls, _ = _run(items, max_batch=100, max_wait=timedelta(milliseconds=20))
    # 1 and 2 are flushed by the deadline during the pause, not held until 3 and 4 arrive
    assert calls == [[1, 2], [3, 4]]


def test_deadline_runs_from_the_first_item_not_the_last():
    clock = TimeTestingGetter(T0)
    calls: list[list[int]] = []

    def fn(batch: list[int]) -> list[int]:
        calls.append(list(batch))
        return batch

    logic: MicroBatchLogic[int, int] = MicroBatchLogic(fn, 100, timedelta(seconds=1), None, clock.get)
    logic.on_batch([1])
    for x in (2, 3, 4):  # a steady trickle that would keep resetting an idle timeout
        clock.advance(timedelta(seconds=0.4))
        logic.on_batch([x])
        if clock.now - T0 >= timedelta(seconds=1):
            assert logic.notify_at() == T0 + timedelta(seconds=1)
            assert logic.on_notify()[0] == [1, 2, 3, 4]
    assert calls == [[1, 2, 3, 4]]
    assert logic.notify_at() is None


def test_every_item_has_one_result_across_shards():
    calls, out = _run(list(range(1000)), max_batch=16, max_wait=timedelta(milliseconds=5), shards=4)
    assert sorted(out) == [x * 10 for x in range(1000)]
    assert max(len(c) for c in calls) <= 16


def test_buffer_survives_snapshot_and_flushes_first_after_restore():
    clock = TimeTestingGetter(T0)
    logic: MicroBatchLogic[int, int] = MicroBatchLogic(
        lambda b: [x + 1 for x in b], 10, timedelta(seconds=5), None, clock.get
    )
    out, _ = logic.on_batch([1, 2, 3])
    snap = logic.snapshot()
    assert out == [] and snap == [1, 2, 3]
    logic.on_batch([4])
    assert snap == [1, 2, 3]  # the snapshot is a copy
    restored = MicroBatchLogic(lambda b: [x + 1 for x in b], 10, timedelta(seconds=5), snap, clock.get)
    assert restored.notify_at() == T0  # overdue: flush at the first chance
    assert restored.on_notify()[0] == [2, 3, 4]


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_worker_keys_put_one_shard_on_each_worker_of_a_real_cluster(workers):
    keys = list(worker_keys(workers))
    flow = Dataflow("placement")
    keyed = op.key_on("key", op.input("in", flow, TestingSource(keys * 3)), str)
    placed = PlacementSink(lambda kv: kv[0])
    op.output("out", op.stateful_map("seen", keyed, lambda state, x: (state, x)), placed)
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    assert placed.where == {key: w for w, key in enumerate(keys)}
    # and plain numbered keys, as shards used to be named, do not spread like that
    assert [worker_of(str(i), 2) for i in range(2)] == [1, 1]


def test_a_micro_batch_on_worker_keys_scores_every_item_once_on_four_workers():
    calls: list[list[int]] = []
    flow = Dataflow("mb4")
    src = op.input("in", flow, TestingSource(list(range(400)), batch_size=50))
    out: list[int] = []

    def fn(batch: list[int]) -> list[int]:
        calls.append(list(batch))
        return [x * 10 for x in batch]

    batched = micro_batch("mb", src, fn, str, shards=worker_keys(4))
    op.output("out", batched, TestingSink(out))
    cluster_main(flow, [], 0, worker_count_per_proc=4)
    assert sorted(out) == [x * 10 for x in range(400)]
    assert sorted(x for c in calls for x in c) == list(range(400))


def test_shards_are_stable_and_spread():
    names = [str(i) for i in range(8)]
    assert pick_shard("card-1", names) == pick_shard("card-1", names)
    assert len({pick_shard(f"card-{i}", names) for i in range(200)}) == 8


@given(
    st.lists(st.tuples(st.lists(st.integers(), max_size=20), st.integers(min_value=0, max_value=3000)), max_size=30),
    st.integers(min_value=1, max_value=16),
)
def test_buffer_keeps_order_and_each_item_once_and_its_deadline_is_the_oldest_items(arrivals, max_batch):
    wait = timedelta(seconds=1)
    buf: BatchBuffer[int] = BatchBuffer(max_batch, wait)
    now, taken, added, pending_deadlines = T0, [], [], []
    for values, step_ms in arrivals:
        now += timedelta(milliseconds=step_ms)
        buf.add(values, now)
        added += values
        pending_deadlines += [now + wait] * len(values)
        while buf.due(now):
            head = buf.take()
            assert len(head) <= max_batch
            taken += head
            pending_deadlines = pending_deadlines[len(head) :]
        assert buf.deadline == (pending_deadlines[0] if pending_deadlines else None)
    assert taken + buf.snapshot() == added
