"""Replicated state: every replica gets every update, each query goes to one replica.

A read-mostly structure that every request needs (an item index, a rule set, a
popularity table) is kept as ``replicas`` copies, keyed ``"0"`` .. ``"N-1"``:
updates are broadcast to all copies, and each query is routed to one copy by a
stable hash of its key (``by_hash``), so queries spread over workers while
updates cost ``replicas`` times. The alternative, one copy that every query is
routed to, keeps memory down but serialises every search on one worker.

Within a runtime batch a replica sees updates and queries in arrival order, in
runs: consecutive updates are applied together (one index change for many
items), consecutive queries are answered together (one search call).

What a replica is and does is the caller's (:class:`Replica`); it is built on
the worker, lazily, knowing its own name and its checkpointed state, so it can
load what it does not checkpoint (e.g. bulk-load a large index from an online
store instead of snapshotting it every epoch).

Bytewax places keys on workers by hash: ``replicas=N`` names the copies ``"0"`` ..
``"N-1"``, and two of them may share a worker. Given the names of
:func:`operators.shard_keys.worker_keys` instead, each worker holds exactly one copy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from operators.batching import Shards, by_hash, shard_names
from operators.probes import Origin, StageProbe

U = TypeVar("U")
Q = TypeVar("Q")
Y = TypeVar("Y")
S = TypeVar("S")
S_co = TypeVar("S_co", covariant=True)

Tagged = tuple[str, Any]  # ("u", update) or ("q", query)


class Replica(Protocol[U, Q, Y, S_co]):
    """One copy of the replicated state."""

    def update(self, updates: list[U]) -> list[Y]: ...
    def answer(self, queries: list[Q]) -> list[Y]: ...
    def snapshot(self) -> S_co: ...


class _ReplicaLogic(StatefulBatchLogic[tuple[str, Tagged], Y, S], Generic[U, Q, Y, S]):
    def __init__(
        self,
        make: Callable[[str, S | None], Replica[U, Q, Y, S]],
        resume: S | None,
        probes: tuple[StageProbe[U], StageProbe[Q]] | None = None,
    ) -> None:
        self.make = make
        self.resume = resume
        self.replica: Replica[U, Q, Y, S] | None = None
        self.update_probe, self.query_probe = probes or (StageProbe("update"), StageProbe("query"))

    def _run(self, kind: str, run: list[Any]) -> list[Y]:
        assert self.replica is not None
        probe = self.update_probe if kind == "u" else self.query_probe
        started = probe.start()
        out = self.replica.update(run) if kind == "u" else self.replica.answer(run)
        probe.done(run, started)
        return out

    def on_batch(self, values: list[tuple[str, Tagged]]) -> tuple[list[Y], bool]:
        if self.replica is None:
            self.replica = self.make(values[0][0], self.resume)
        out: list[Y] = []
        run: list[Any] = []
        kind = ""
        for _, (tag, value) in [*values, ("", ("end", None))]:
            if tag != kind and run:
                out.extend(self._run(kind, run))
                run = []
            kind = tag
            run.append(value)
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> S:
        if self.replica is None:
            assert self.resume is not None, "a replica is snapshotted only after it was built or restored"
            return self.resume
        return self.replica.snapshot()


@operator
def replicated(
    step_id: str,
    updates: Stream[U],
    queries: Stream[Q],
    replicas: Shards,
    query_key: Callable[[Q], str],
    make: Callable[[str, S | None], Replica[U, Q, Y, S]],
    origin: Origin[Q] | None = None,
) -> Stream[Y]:
    """Keep ``replicas`` copies (a count, or their names) built by ``make(name, resume)``; broadcast
    ``updates``, route ``queries``.

    Instrumented as stages ``<step_id>_update`` and ``<step_id>_query`` (one call per
    run of updates or queries); ``origin`` (the record a query came from) adds the
    queries' age and spans.

    ```python
    answers = replicated("catalogue", item_changes, requests, 2, lambda r: r.request_id, CatalogueReplica.build)
    ```
    """
    names = list(shard_names(replicas))
    if not names:
        raise ValueError("replicas must be >= 1")

    def broadcast(u: U) -> list[tuple[str, tuple[str, Tagged]]]:
        return [(name, (name, ("u", u))) for name in names]

    replica_of = by_hash(names)

    def route(q: Q) -> tuple[str, tuple[str, Tagged]]:
        name = replica_of(query_key(q))
        return name, (name, ("q", q))

    merged = op.merge("in", op.flat_map("broadcast", updates, broadcast), op.map("route", queries, route))

    probes: tuple[StageProbe[U], StageProbe[Q]] = (
        StageProbe(f"{step_id}_update"),
        StageProbe(f"{step_id}_query", origin),
    )

    def builder(resume: S | None) -> _ReplicaLogic[U, Q, Y, S]:
        return _ReplicaLogic(make, resume, probes)

    return op.map("out", op.stateful_batch("replica", merged, builder), lambda kv: kv[1])
