from datetime import timedelta

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from operators.microbatch import MicroBatchLogic, micro_batch, shard_of


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


def test_flushes_by_deadline_from_first_item():
    items = [1, 2, TestingSource.PAUSE(timedelta(milliseconds=400)), 3, 4]
    calls, out = _run(items, max_batch=100, max_wait=timedelta(milliseconds=50))
    # 1 and 2 are flushed by the deadline during the pause, not held until 3 and 4 arrive
    assert calls == [[1, 2], [3, 4]]


def test_every_item_has_one_result_across_shards():
    calls, out = _run(list(range(1000)), max_batch=16, max_wait=timedelta(milliseconds=5), shards=4)
    assert sorted(out) == [x * 10 for x in range(1000)]
    assert max(len(c) for c in calls) <= 16


def test_buffer_survives_snapshot_and_flushes_first_after_restore():
    logic: MicroBatchLogic[int, int] = MicroBatchLogic(lambda b: [x + 1 for x in b], 10, timedelta(seconds=5), None)
    out, _ = logic.on_batch([1, 2, 3])
    assert out == [] and logic.snapshot() == [1, 2, 3]
    restored = MicroBatchLogic(lambda b: [x + 1 for x in b], 10, timedelta(seconds=5), logic.snapshot())
    assert restored.notify_at() is not None  # overdue: flush at the first chance
    assert restored.on_notify()[0] == [2, 3, 4]


def test_shards_are_stable_and_spread():
    assert shard_of("card-1", 8) == shard_of("card-1", 8)
    assert len({shard_of(f"card-{i}", 8) for i in range(200)}) == 8
