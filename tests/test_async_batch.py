import threading
import time
from datetime import timedelta

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from operators.async_batch import async_micro_batch


def test_batches_run_off_the_dataflow_thread_and_grow_while_one_is_in_flight():
    calls: list[tuple[list[int], str]] = []

    def slow(batch: list[int]) -> list[int]:
        calls.append((list(batch), threading.current_thread().name))
        time.sleep(0.2)
        return [x * 10 for x in batch]

    items = [
        1,
        TestingSource.PAUSE(timedelta(milliseconds=50)),
        2,
        3,
        4,
        TestingSource.PAUSE(timedelta(milliseconds=400)),
        5,
    ]
    flow = Dataflow("async")
    src: op.Stream[int] = op.input("in", flow, TestingSource(items))  # type: ignore[arg-type]
    fast = op.map("fast", src, lambda x: ("fast", x, time.monotonic()))
    slow_out = async_micro_batch("gen", src, slow, str, max_batch=8, max_wait=timedelta(milliseconds=1))
    out: list = []
    fast_out: list = []
    op.output("out", slow_out, TestingSink(out))
    op.output("fast_out", fast, TestingSink(fast_out))
    run_main(flow)
    assert sorted(out) == [10, 20, 30, 40, 50]
    assert [c[0] for c in calls] == [[1], [2, 3, 4], [5]]  # 2-4 arrived while [1] was being computed
    assert all(name.startswith("sluice-") and "gen" in name for _, name in calls)  # not the dataflow thread
    assert [x for _, x, _ in fast_out] == [1, 2, 3, 4, 5]


def test_in_flight_items_are_in_the_snapshot():
    from operators.async_batch import AsyncBatchLogic, _executor

    gate = threading.Event()

    def blocked(batch: list[int]) -> list[int]:
        gate.wait(5)
        return batch

    logic = AsyncBatchLogic(blocked, _executor("snap-test"), 2, timedelta(seconds=10), timedelta(milliseconds=1), None)
    out, _ = logic.on_batch([1, 2, 3])
    assert out == [] and logic.snapshot() == [1, 2, 3]  # [1, 2] in flight, [3] buffered
    gate.set()
    results, _ = logic.on_eof()
    assert results == [1, 2, 3]
