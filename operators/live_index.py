"""A live index inside the dataflow: documents in, queries answered, both in one stateful step.

Document events and queries meet in one keyed step, so a query is answered
from every document event that reached the step before it. Three things make
that usable from the first second:

* **Small steps.** Documents wait in a backlog and are indexed (chunked,
  embedded, added) ``budget`` units of work at a time; between steps the worker
  runs everything else. A corpus arriving all at once no longer blocks the
  worker for a minute in one call.
* **Queries wait for what came before them.** A query that arrives while
  documents are still in the backlog waits (in the state) until they are indexed,
  or ``max_query_wait`` at most; it is then answered and marked as answered from
  a warming index. It is never silently answered from an empty index.
* **Readiness is announced.** Each time the backlog drains, a
  :class:`IndexReady` event goes out with the index's size: downstream it becomes
  a record on the changes topic and a log line.

What an index is (chunking, embedding, ranking) is the caller's: any object with
the :class:`MaintainedIndex` methods. The whole thing (index, backlog, waiting
queries) is the step's snapshot, so a resumed flow holds exactly the documents
processed before the checkpoint and replays the rest, without re-embedding.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from operators.clock import Clock, utc_now
from operators.metrics import record_index
from operators.probes import Origin, StageProbe
from state.index_events import IndexChange, IndexReady

D = TypeVar("D")
Q = TypeVar("Q")
R = TypeVar("R")
T = TypeVar("T")
__all__ = ["Answered", "IndexChange", "IndexOut", "IndexReady", "MaintainedIndex", "live_index"]
D_contra = TypeVar("D_contra", contravariant=True)
Q_contra = TypeVar("Q_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)


@dataclass(frozen=True, slots=True)
class Answered(Generic[Q, R]):
    """A query and its result; ``warming`` when it waited ``max_query_wait`` and documents were still pending."""

    query: Q
    result: R
    waited_ms: float
    warming: bool


class MaintainedIndex(Protocol[D_contra, Q_contra, R_co]):
    """What the operator needs of an index."""

    @property
    def doc_count(self) -> int: ...
    @property
    def chunk_count(self) -> int: ...
    def cost(self, doc: D_contra) -> int: ...
    def apply(self, docs: Sequence[D_contra]) -> Sequence[IndexChange]: ...
    def answer(self, queries: Sequence[Q_contra]) -> Sequence[R_co]: ...
    def state(self) -> Any: ...


@dataclass(frozen=True)
class IndexOut(Generic[Q, R]):
    """Streams out of :func:`live_index`."""

    answered: Stream[Answered[Q, R]]
    changes: Stream[tuple[Any, IndexChange | IndexReady]]  # (the document's tag, or None for readiness)


class _LiveIndexLogic(StatefulBatchLogic[tuple[str, Any], tuple[str, Any], dict[str, Any]], Generic[D, Q, R]):
    def __init__(
        self,
        build: Callable[[Any | None], MaintainedIndex[D, Q, R]],
        resume: dict[str, Any] | None,
        budget: int,
        max_query_wait: timedelta,
        now_getter: Clock,
        probes: tuple[StageProbe[D], StageProbe[Q], str] | None = None,
    ) -> None:
        self.index = build(resume["index"] if resume else None)
        self.apply_probe, self.search_probe, self.name = probes or (StageProbe("index"), StageProbe("search"), "index")
        self.pending: list[tuple[D, Any, float]] = list(resume["pending"]) if resume else []  # doc, tag, arrived
        self.waiting: list[tuple[Q, float]] = list(resume["waiting"]) if resume else []  # query, arrived
        self.budget = budget
        self.max_wait_s = max_query_wait.total_seconds()
        self.now = now_getter
        # Restored with nothing left to index: ready at once, and said so (the flow's log and readiness record
        # otherwise only come when a backlog drains, so a restarted flow never announced itself).
        self.announce = resume is not None and not self.pending and self.index.doc_count > 0

    def _answer(self, queries: list[tuple[Q, float]], now: float, warming: bool) -> list[tuple[str, Any]]:
        if not queries:
            return []
        asked = [q for q, _ in queries]
        started = self.search_probe.start()
        results = self.index.answer(asked)
        self.search_probe.done(asked, started)
        return [
            ("answered", Answered(q, r, round((now - t) * 1000.0, 2), warming))
            for (q, t), r in zip(queries, results, strict=True)
        ]

    def _work(self) -> list[tuple[str, Any]]:
        """Index up to ``budget`` units of the backlog, then answer the queries that may go."""
        out: list[tuple[str, Any]] = []
        if self.announce and not self.pending:
            restored = IndexReady(self.index.doc_count, self.index.chunk_count, 0, 0.0, time.time())
            out.append(("change", (None, restored)))
        self.announce = False
        if self.pending:
            take, spent = 0, 0
            while take < len(self.pending) and (
                take == 0 or spent + self.index.cost(self.pending[take][0]) <= self.budget
            ):
                spent += self.index.cost(self.pending[take][0])
                take += 1
            batch, self.pending = self.pending[:take], self.pending[take:]
            docs = [doc for doc, _, _ in batch]
            started = self.apply_probe.start()
            changes = self.index.apply(docs)
            self.apply_probe.done(docs, started)
            out += [("change", (tag, change)) for (_, tag, _), change in zip(batch, changes, strict=True)]
            if not self.pending:
                now = self.now().timestamp()
                ready = IndexReady(
                    self.index.doc_count, self.index.chunk_count, len(batch), round(now - batch[0][2], 3), time.time()
                )
                out.append(("change", (None, ready)))
        now = self.now().timestamp()
        if not self.pending:
            out += self._answer(self.waiting, now, warming=False)
            self.waiting = []
        else:
            overdue = [(q, t) for q, t in self.waiting if now - t >= self.max_wait_s]
            self.waiting = [(q, t) for q, t in self.waiting if now - t < self.max_wait_s]
            out += self._answer(overdue, now, warming=True)
        oldest = now - self.pending[0][2] if self.pending else 0.0
        sizes = {"documents": self.index.doc_count, "chunks": self.index.chunk_count}
        record_index(self.name, sizes, len(self.pending), oldest)
        return out

    def on_batch(self, values: list[tuple[str, Any]]) -> tuple[list[tuple[str, Any]], bool]:
        now = self.now().timestamp()
        out: list[tuple[str, Any]] = []
        ready_now: list[tuple[Q, float]] = []
        for kind, value in values:
            if kind == "doc":
                if ready_now:  # queries before this document are answered without it
                    out += self._answer(ready_now, now, warming=False)
                    ready_now = []
                doc, tag = value
                self.pending.append((doc, tag, now))
            elif self.pending:
                self.waiting.append((value, now))
            else:
                ready_now.append((value, now))
        out += self._answer(ready_now, now, warming=False)
        out += self._work()
        return out, StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[tuple[str, Any]], bool]:
        return self._work(), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if self.pending or self.announce:
            return self.now()  # more backlog: continue at the next chance, after the rest of the worker ran
        if self.waiting:
            return datetime.fromtimestamp(min(t for _, t in self.waiting) + self.max_wait_s, self.now().tzinfo)
        return None

    def snapshot(self) -> dict[str, Any]:
        return {"index": self.index.state(), "pending": list(self.pending), "waiting": list(self.waiting)}


@operator
def live_index(
    step_id: str,
    documents: Stream[tuple[D, T]],
    queries: Stream[Q],
    build: Callable[[Any | None], MaintainedIndex[D, Q, R]],
    budget: int = 20_000,
    max_query_wait: timedelta = timedelta(seconds=10),
    name: str = "kb",
    now_getter: Clock = utc_now,
    origin: Origin[Q] | None = None,
) -> IndexOut[Q, R]:
    """Keep an index of ``documents`` and answer ``queries`` from it (see the module docstring).

    ``documents`` carry a tag each (e.g. their Kafka position) that comes back with
    the :class:`IndexChange` they caused. ``build(state or None)`` makes the index
    (restoring it from a snapshot's ``state()``); ``budget`` is in the index's
    ``cost`` units per step. ``origin`` (the input record a query came from) adds
    the queries' age and spans to the metrics.

    ```python
    out = live_index("kb", docs, questions, lambda state: MyIndex.from_state(state) if state else MyIndex())
    out.answered  # Answered(query, result, waited_ms, warming)
    ```
    """
    docs = op.map("doc_in", documents, lambda d: (name, ("doc", d)))
    asks = op.map("query_in", queries, lambda q: (name, ("query", q)))
    merged = op.merge("in", docs, asks)

    probes: tuple[StageProbe[D], StageProbe[Q], str] = (
        StageProbe(f"{step_id}_index"),
        StageProbe(f"{step_id}_search", origin),
        name,
    )

    def builder(resume: dict[str, Any] | None) -> _LiveIndexLogic[D, Q, R]:
        return _LiveIndexLogic(build, resume, budget, max_query_wait, now_getter, probes)

    results = op.stateful_batch("index", merged, builder)
    split = op.branch("is_answer", results, lambda kv: kv[1][0] == "answered")
    return IndexOut(
        answered=op.map("answered", split.trues, lambda kv: kv[1][1]),
        changes=op.map("changes", split.falses, lambda kv: kv[1][1]),
    )
