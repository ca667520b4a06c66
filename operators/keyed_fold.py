"""Per-key state folded over events, emitted once per runtime batch (the newest view only).

A key's events in a batch are applied in order; then ONE view of the state goes
downstream. For write-through state (a user's taste written to Redis) that is
what a store wants: the final value of the batch, not every intermediate one,
so a user with ten interactions in a batch costs one write. The state is
checkpointed through ``save``/``load`` (copies), so a resumed flow folds the
replayed events onto exactly the state the checkpoint held: the result depends
only on the key's events in partition order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import bytewax.operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

X = TypeVar("X")
S = TypeVar("S")
Y = TypeVar("Y")


class _FoldLogic(StatefulBatchLogic[X, Y, Any], Generic[X, S, Y]):
    def __init__(self, state: S, apply: Callable[[S, X], None], view: Callable[[S], Y], save: Callable[[S], Any]):
        self.state = state
        self.apply = apply
        self.view = view
        self.save = save

    def on_batch(self, values: list[X]) -> tuple[list[Y], bool]:
        for x in values:
            self.apply(self.state, x)
        return [self.view(self.state)], StatefulBatchLogic.RETAIN

    def snapshot(self) -> Any:
        return self.save(self.state)


@operator
def fold_latest(
    step_id: str,
    up: KeyedStream[X],
    new: Callable[[], S],
    apply: Callable[[S, X], None],
    view: Callable[[S], Y],
    save: Callable[[S], Any],
    load: Callable[[Any], S],
) -> KeyedStream[Y]:
    """Fold each key's events into its state with ``apply``; emit ``view(state)`` once per batch.

    ```python
    tastes = fold_latest("taste", by_user, Taste.new, Taste.add_event, Taste.fields, Taste.state, Taste.from_state)
    ```
    """

    def builder(resume: Any | None) -> _FoldLogic[X, S, Y]:
        return _FoldLogic(new() if resume is None else load(resume), apply, view, save)

    return op.stateful_batch("fold", up, builder)
