from datetime import UTC, datetime, timedelta

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.testing import TestingSink, TestingSource, TimeTestingGetter, run_main

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
    run_main(flow)
    return [(k, v, hist) for k, (v, hist) in out]


def test_pairs_each_value_with_the_previous_ones_per_key_bounded():
    out = _run([("a", 1), ("b", 10), ("a", 2), ("a", 3), ("a", 4), ("a", 5)], max_turns=3)
    assert [(k, v, h) for k, v, h in out if k == "a"] == [
        ("a", 1, ()),
        ("a", 2, (1,)),
        ("a", 3, (1, 2)),
        ("a", 4, (1, 2, 3)),
        ("a", 5, (2, 3, 4)),  # at most three remembered
    ]
    assert ("b", 10, ()) in out


def test_idle_sessions_are_forgotten_in_a_running_flow():
    items = [("a", 1), ("b", 1), ("a", 2), TestingSource.PAUSE(timedelta(milliseconds=400)), ("a", 3)]
    out = _run(items, idle=timedelta(milliseconds=100))
    # a's memory expired during the pause: its third turn starts a fresh memory
    assert [(v, h) for k, v, h in out if k == "a"] == [(1, ()), (2, (1,)), (3, ())]


def test_idle_expiry_discards_the_state_and_activity_postpones_it():
    clock = TimeTestingGetter(datetime(2026, 1, 1, tzinfo=UTC))
    logic: SessionMemoryLogic[str, str] = SessionMemoryLogic(6, timedelta(minutes=15), None, lambda v: v, clock.get)
    logic.on_batch(["hello"])
    clock.advance(timedelta(minutes=10))
    logic.on_batch(["again"])  # activity moves the expiry
    assert logic.notify_at() == clock.now + timedelta(minutes=15)
    clock.advance(timedelta(minutes=15))
    out, keep = logic.on_notify()
    assert out == [] and keep is StatefulBatchLogic.DISCARD
    assert logic.snapshot() == (("hello", "again"), (clock.now - timedelta(minutes=15)).timestamp())


def test_memory_resumes_from_its_snapshot_and_a_graceful_stop_keeps_it():
    clock = TimeTestingGetter(datetime(2026, 1, 1, tzinfo=UTC))
    before: SessionMemoryLogic[str, str] = SessionMemoryLogic(6, timedelta(minutes=15), None, lambda v: v, clock.get)
    before.on_batch(["hello"])
    assert before.on_eof() == ([], StatefulBatchLogic.RETAIN)  # the input ending (a stop) forgets nothing
    after: SessionMemoryLogic[str, str] = SessionMemoryLogic(
        6, timedelta(minutes=15), before.snapshot(), lambda v: v, clock.get
    )
    assert after.on_batch(["again"])[0] == [("again", ("hello",))]


def test_notes_are_remembered_not_emitted_and_a_transformed_value_is_both_emitted_and_remembered():
    """The assistant's answers come back as notes (memory only); its turns are rewritten against the memory."""
    clock = TimeTestingGetter(datetime(2026, 1, 1, tzinfo=UTC))
    logic: SessionMemoryLogic[str, str] = SessionMemoryLogic(
        6,
        timedelta(minutes=15),
        None,
        lambda v: v,
        clock.get,
        is_note=lambda v: v.startswith("note:"),
        transform=lambda v, memory: f"{v}+{len(memory)}",
    )
    out, _ = logic.on_batch(["q1", "note:a1", "q2"])
    assert out == [("q1+0", ()), ("q2+2", ("q1+0", "note:a1"))]
    assert logic.snapshot()[0] == ("q1+0", "note:a1", "q2+2")


def test_max_turns_zero_remembers_nothing():
    clock = TimeTestingGetter(datetime(2026, 1, 1, tzinfo=UTC))
    logic: SessionMemoryLogic[str, str] = SessionMemoryLogic(0, timedelta(minutes=15), None, lambda v: v, clock.get)
    assert logic.on_batch(["a", "b"])[0] == [("a", ()), ("b", ())]
    assert logic.snapshot()[0] == ()
