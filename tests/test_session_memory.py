from datetime import timedelta

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from operators.session_memory import SessionMemoryLogic, session_memory


def _run(items, max_turns=3, idle=timedelta(hours=1)):
    flow = Dataflow("memory")
    src = op.input("in", flow, TestingSource(items))
    keyed = op.key_on("key", src, lambda kv: kv[0])
    remembered: op.KeyedStream = session_memory(
        "mem", op.map("val", keyed, lambda kv: (kv[0], kv[1][1])), max_turns, idle
    )
    out: list = []
    op.output("out", remembered, TestingSink(out))
    before = SessionMemoryLogic.live
    run_main(flow)
    return [(k, v, hist) for k, (v, hist) in out], SessionMemoryLogic.live - before


def test_pairs_each_value_with_the_previous_ones_per_key_bounded():
    out, _ = _run([("a", 1), ("b", 10), ("a", 2), ("a", 3), ("a", 4), ("a", 5)], max_turns=3)
    assert [(k, v, h) for k, v, h in out if k == "a"] == [
        ("a", 1, ()),
        ("a", 2, (1,)),
        ("a", 3, (1, 2)),
        ("a", 4, (1, 2, 3)),
        ("a", 5, (2, 3, 4)),  # at most three remembered
    ]
    assert ("b", 10, ()) in out


def test_idle_sessions_are_forgotten_and_their_state_freed():
    items = [("a", 1), ("b", 1), ("a", 2), TestingSource.PAUSE(timedelta(milliseconds=600)), ("a", 3)]
    out, live_delta = _run(items, idle=timedelta(milliseconds=200))
    # a's memory expired during the pause: its third turn starts a fresh memory
    assert [(v, h) for k, v, h in out if k == "a"] == [(1, ()), (2, (1,)), (3, ())]
    # b expired too and was not recreated; a was recreated once and is held at EOF: one live key left
    assert live_delta == 1


def test_many_sessions_after_they_end_hold_nothing():
    items = [(f"s{i}", 1) for i in range(2000)] + [TestingSource.PAUSE(timedelta(milliseconds=500))]
    _, live_delta = _run(items, idle=timedelta(milliseconds=100))
    assert live_delta == 0
