"""Per-key conversation memory: the last few values of a key, forgotten after it goes idle.

Each value comes out paired with the values seen before it for the same key
(oldest first). Memory is bounded twice: at most ``max_turns`` values per key,
and a key idle for ``idle_timeout`` (system time) is discarded, state and all,
so finished sessions cost nothing. Bytewax's own SessionWindower never discards
its state (upstream issue #577), so it is not used here.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from operators.clock import Clock, utc_now

V = TypeVar("V")
M = TypeVar("M")

Memory = tuple[tuple[M, ...], float]  # remembered values, last seen (POSIX seconds)


class SessionMemoryLogic(StatefulBatchLogic[V, tuple[V, tuple[M, ...]], "Memory[M]"], Generic[V, M]):
    """Memory of one key."""

    def __init__(
        self,
        max_turns: int,
        idle_timeout: timedelta,
        resume: Memory[M] | None,
        remember: Callable[[V], M],
        now_getter: Clock = utc_now,
        is_note: Callable[[V], bool] | None = None,
        transform: Callable[[V, tuple[M, ...]], V] | None = None,
    ) -> None:
        self.max_turns = max_turns
        self.idle_timeout = idle_timeout
        self.remember = remember
        self.is_note = is_note
        self.transform = transform
        self.now = now_getter
        values, seen = resume if resume is not None else ((), now_getter().timestamp())
        self.values: tuple[M, ...] = values
        self.last_seen = seen

    def on_batch(self, values: list[V]) -> tuple[list[tuple[V, tuple[M, ...]]], bool]:
        out = []
        for value in values:
            if self.is_note is None or not self.is_note(value):
                if self.transform is not None:
                    value = self.transform(value, self.values)
                out.append((value, self.values))
            self.values = (*self.values, self.remember(value))[-self.max_turns :] if self.max_turns else ()
        self.last_seen = self.now().timestamp()
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime:
        return datetime.fromtimestamp(self.last_seen, UTC) + self.idle_timeout

    def on_notify(self) -> tuple[list[tuple[V, tuple[M, ...]]], bool]:
        return [], StatefulBatchLogic.DISCARD

    def on_eof(self) -> tuple[list[tuple[V, tuple[M, ...]]], bool]:
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> Memory[M]:
        return (self.values, self.last_seen)


@operator
def session_memory(
    step_id: str,
    up: KeyedStream[V],
    max_turns: int = 6,
    idle_timeout: timedelta = timedelta(minutes=15),
    remember: Callable[[V], M] = lambda v: v,  # type: ignore[assignment,return-value]
    now_getter: Clock = utc_now,
    is_note: Callable[[V], bool] | None = None,
    transform: Callable[[V, tuple[M, ...]], V] | None = None,
) -> KeyedStream[tuple[V, tuple[M, ...]]]:
    """Pair each value with the key's previous values (at most ``max_turns``, oldest first).

    ``remember`` picks what of a value is kept (keep memory small: store the
    text, not the whole request). Values for which ``is_note`` is true are only
    remembered, not emitted (e.g. the assistant's own answers, fed back from its
    output topic, so that the next turn sees the whole conversation). A key that
    sees nothing for ``idle_timeout`` is forgotten; its next value starts a fresh
    memory. ``transform(value, memory)`` rewrites a value with what is remembered
    before it is emitted *and* remembered (e.g. resolving a follow-up question
    against the conversation, so the next follow-up finds the resolved one).

    ```python
    turns = session_memory("memory", requests_by_session, max_turns=6, idle_timeout=timedelta(minutes=15))
    ```
    """

    def builder(resume: Memory[M] | None) -> SessionMemoryLogic[V, M]:
        return SessionMemoryLogic(max_turns, idle_timeout, resume, remember, now_getter, is_note, transform)

    return op.stateful_batch("remember", up, builder)
