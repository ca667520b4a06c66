"""What an instrumented step records about each call: items, time spent, how old its events are, trace spans.

Operators that work on batches (parse, lookups, micro-batches, sinks) wrap each
call in ``t = probe.start()`` ... ``probe.done(items, t)``. That records, per
call and never per item:

* ``sluice_stage_items_total`` and ``sluice_stage_duration_ms`` (the call);
* with an ``origin`` (how to find the Kafka record an item came from), the age
  of the call's events as they leave the stage (``sluice_stage_age_ms``: now
  minus the record's Kafka timestamp, which producers set when they send). At
  most ``AGE_SAMPLE`` evenly spaced items of a call are looked at, each counted
  for the ones it stands for, so a batch of 2,000 costs the same as one of 128;
* with tracing on, a span for every item whose origin carries a ``traceparent``.

When metrics and tracing are both off, ``start`` returns 0 and ``done`` returns
at once: the instrumented operators then cost what they did before.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import numpy as np

from operators import tracing
from operators.kafka.records import AnyHeaders, SourceRecord
from operators.metrics import PROCESS, STAGE_AGE, STAGE_DURATION, STAGE_ITEMS, STAGE_ORDER

X = TypeVar("X")
Origin = Callable[[X], SourceRecord]  # the input record an item was made from
AGE_SAMPLE = 128
_built = itertools.count()


def stage_name(step_id: str) -> str:
    """The stage label of a step: its id inside the flow (Bytewax hands operators ``<flow>.<step>``).

    >>> stage_name("fraud.score"), stage_name("score")
    ('score', 'score')
    """
    return step_id.split(".", 1)[1] if "." in step_id else step_id


class StageProbe(Generic[X]):
    """The instrumentation of one stage (see the module docstring).

    ``headers`` finds an item's trace headers when it is not its origin's (output records). Stages are
    numbered in the order they are built (``order`` overrides it), which is how a
    flow is written, upstream first.
    """

    __slots__ = ("stage", "origin", "headers", "key")

    def __init__(
        self,
        stage: str,
        origin: Origin[X] | None = None,
        headers: Callable[[X], AnyHeaders] | None = None,
        order: int | None = None,
    ) -> None:
        self.stage = stage = stage_name(stage)
        self.origin = origin
        if headers is None and origin is not None:
            headers = functools.partial(_origin_headers, origin)
        self.headers = headers
        self.key = (stage,)
        if STAGE_ORDER.value(self.key) is None or order is not None:
            STAGE_ORDER.set(self.key, next(_built) if order is None else order)

    def start(self) -> int:
        """A start mark for :meth:`done` (0 when nothing is recorded)."""
        return time.perf_counter_ns() if PROCESS.on or tracing.enabled() else 0

    def done(self, items: Sequence[X], started: int) -> None:
        """Record a call that began at ``started`` and processed ``items``."""
        if not started:
            return
        ended = time.perf_counter_ns()
        origin = self.origin
        if PROCESS.on:
            STAGE_ITEMS.add(self.key, len(items))
            STAGE_DURATION.observe(self.key, (ended - started) / 1e6)
            if origin is not None and items:
                observe_ages(self.key, items, origin)
        headers = self.headers
        if headers is not None and tracing.enabled():
            parents = tracing.traced_parents(headers(x) for x in items)
            if parents:
                wall_end = time.time_ns()
                tracing.record_spans(self.stage, parents, wall_end - (ended - started), wall_end, {"items": len(items)})


def _origin_headers(origin: Origin[X], item: X) -> AnyHeaders:
    return origin(item).headers


def observe_ages(key: tuple[str, ...], items: Sequence[X], origin: Origin[X]) -> None:
    """Observe how old ``items`` are now (strided to at most ``AGE_SAMPLE`` looks per call)."""
    stride = -(-len(items) // AGE_SAMPLE)
    sample = items[::stride] if stride > 1 else items
    stamps = np.fromiter((origin(x).timestamp_ms for x in sample), dtype=np.float64, count=len(sample))
    stamps = stamps[stamps > 0]  # records without a timestamp say nothing about age
    if len(stamps):
        STAGE_AGE.observe_many(key, np.maximum(time.time() * 1000.0 - stamps, 0.0), weight=stride)
