"""The keyed state-machine operator: inputs and deadlines per key, on an injected clock and in a running flow."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.testing import TestingSink, TestingSource, TimeTestingGetter, run_main

from operators.timed_machine import _MachineLogic, timed_machine

WAIT = timedelta(milliseconds=150)


@dataclass
class Reminder:
    """Says "late" once if no new input comes within WAIT of the last one; finished after a "stop" input."""

    deadline: datetime | None = None
    stopped: bool = False

    @classmethod
    def build(cls, resume: datetime | None) -> Reminder:
        return cls(resume)

    def on_items(self, items: list[str], now: datetime) -> list[str]:
        self.stopped = "stop" in items
        self.deadline = now + WAIT
        return [f"got {i}" for i in items]

    def on_time(self, now: datetime) -> list[str]:
        assert self.deadline is not None and now >= self.deadline
        self.deadline = None
        return ["late"]

    def wake_at(self) -> datetime | None:
        return self.deadline

    def finished(self) -> bool:
        return self.stopped

    def snapshot(self) -> datetime | None:
        return self.deadline


def test_the_logic_wakes_the_machine_on_the_injected_clock_and_discards_it_when_finished():
    clock = TimeTestingGetter(datetime(2026, 1, 1, tzinfo=UTC))
    logic = _MachineLogic(Reminder.build(None), clock.get)
    assert logic.on_batch(["a"]) == (["got a"], StatefulBatchLogic.RETAIN)
    assert logic.notify_at() == clock.now + WAIT
    clock.advance(WAIT)
    assert logic.on_notify() == (["late"], StatefulBatchLogic.RETAIN)
    assert logic.notify_at() is None and logic.snapshot() is None
    assert logic.on_batch(["stop"]) == (["got stop"], StatefulBatchLogic.DISCARD)


def test_deadlines_fire_between_inputs_in_a_running_flow():
    items: list = [("k", "a"), ("j", "x"), TestingSource.PAUSE(timedelta(milliseconds=500)), ("k", "b"), ("j", "stop")]
    flow = Dataflow("reminders")
    out: list[tuple[str, str]] = []
    keyed = op.key_on("key", op.input("in", flow, TestingSource(items)), lambda kv: kv[0])
    values: op.KeyedStream[str] = op.map("value", keyed, lambda kv: (kv[0], kv[1][1]))
    op.output("out", timed_machine("remind", values, Reminder.build), TestingSink(out))
    run_main(flow)
    assert [v for k, v in out if k == "k"][:3] == ["got a", "late", "got b"]  # woken during the pause, no input
    assert [v for k, v in out if k == "j"] == ["got x", "late", "got stop"]  # finished: no "late" after stop
