"""Keyed state machines with deadlines: each key's machine takes its inputs and wakes itself at its next deadline.

Workflows with people in them (approval chains, SLAs, reminders) need state
per key that changes on input *and* on time: a deadline passes with no input
and something must still happen. A :class:`Machine` says what to do with a
batch of inputs, what to do when woken, when it next wants waking and when it
is finished; this operator runs one per key as checkpointed state on Bytewax's
notification timers, with the clock injected (tests move a
``TimeTestingGetter`` instead of sleeping).

Timers survive restarts: the machine's snapshot holds its deadlines, and on
resume Bytewax asks every restored key for :meth:`Machine.wake_at`, so a
deadline that passed while the flow was down fires at once after the restart.
Inputs and deadlines due together are handled inputs-first in one call
(:meth:`Machine.on_items` gets the time, so a machine applies what is due
before it looks at the inputs).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Generic, Protocol, TypeVar

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from operators.clock import Clock, utc_now

V = TypeVar("V")
W = TypeVar("W")
S = TypeVar("S")
S_co = TypeVar("S_co", covariant=True)


class Machine(Protocol[V, W, S_co]):
    """One key's state machine (see the module docstring)."""

    def on_items(self, items: list[V], now: datetime) -> list[W]:
        """Take a batch of inputs (in arrival order) at ``now``; what comes out."""
        ...

    def on_time(self, now: datetime) -> list[W]:
        """Woken at or after :meth:`wake_at`; what comes out."""
        ...

    def wake_at(self) -> datetime | None:
        """When to be woken next (None: only by input)."""
        ...

    def finished(self) -> bool:
        """True once the key's state can be dropped."""
        ...

    def snapshot(self) -> S_co:
        """An immutable copy of the state, from which the builder rebuilds the machine."""
        ...


class _MachineLogic(StatefulBatchLogic[V, W, S], Generic[V, W, S]):
    def __init__(self, machine: Machine[V, W, S], now_getter: Clock) -> None:
        self.machine = machine
        self.now = now_getter

    def _keep(self) -> bool:
        return StatefulBatchLogic.DISCARD if self.machine.finished() else StatefulBatchLogic.RETAIN

    def on_batch(self, values: list[V]) -> tuple[list[W], bool]:
        return self.machine.on_items(values, self.now()), self._keep()

    def on_notify(self) -> tuple[list[W], bool]:
        return self.machine.on_time(self.now()), self._keep()

    def on_eof(self) -> tuple[list[W], bool]:
        return [], self._keep()

    def notify_at(self) -> datetime | None:
        return self.machine.wake_at()

    def snapshot(self) -> S:
        return self.machine.snapshot()


@operator
def timed_machine(
    step_id: str,
    up: KeyedStream[V],
    build: Callable[[S | None], Machine[V, W, S]],
    now_getter: Clock = utc_now,
) -> KeyedStream[W]:
    """Run ``build(resume_state)``'s machine per key over ``up`` (see the module docstring).

    ```python
    outs = timed_machine("cases", inputs_by_case, CaseMachine.build)   # KeyedStream of what machines emit
    ```
    """

    def builder(resume: S | None) -> _MachineLogic[V, W, S]:
        return _MachineLogic(build(resume), now_getter)

    return op.stateful_batch("machine", up, builder)
