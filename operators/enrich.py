"""Batched enrichment: one lookup call per runtime batch, for every item's key at once.

The lookup is any ``fetch_many(keys) -> (values by key, degraded)`` function,
typically a batched read of an online store (:class:`state.feature_store.FeatureStore`):
batching turns a round trip per event into a round trip per batch, which is
what makes a remote lookup affordable at tens of thousands of events per
second. The operator knows nothing about what is fetched; a missing value is
``None`` and the caller decides the fallback.

Instrumented as stage ``step_id`` (:mod:`operators.probes`) plus the lookup's own
time (``sluice_lookup_duration_ms``); a :class:`state.feature_store.FeatureStore`
exports its cache hits, misses, fallbacks and circuit state by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TypeVar

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from operators.metrics import LOOKUP_DURATION, PROCESS
from operators.probes import Origin, StageProbe

X = TypeVar("X")
K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
Y = TypeVar("Y")

FetchMany = Callable[[Iterable[K]], tuple[Mapping[K, V], bool]]  # V may include None ("no value")


@operator
def enrich_batch(
    step_id: str,
    up: Stream[X],
    fetcher_factory: Callable[[], FetchMany[K, V]],
    key_getter: Callable[[X], K],
    combine: Callable[[X, V | None, bool], Y] = lambda x, v, d: (x, v, d),  # type: ignore[assignment,return-value]
    origin: Origin[X] | None = None,
) -> Stream[Y]:
    """Attach each item's looked-up value: ``combine(item, value or None, degraded)``,
    by default the tuple ``(item, value, degraded)``.

    ``fetcher_factory`` is called once per worker, lazily, on the worker (so a
    client with sockets is never pickled); ``degraded`` is what the fetcher
    reported for the batch (e.g. the store was unreachable). ``combine`` builds
    the item downstream steps want, saving a step per event on hot paths.
    ``origin`` (the input record an item came from) adds event ages and spans.

    ```python
    enriched = enrich_batch("profiles", events, lambda: FeatureStore(url, "card").get_many, lambda e: e.card_id)
    ```
    """
    fetch: FetchMany[K, V] | None = None
    probe: StageProbe[X] = StageProbe(step_id, origin)
    lookup_key = probe.key

    def enrich(batch: list[X]) -> list[Y]:
        nonlocal fetch
        if fetch is None:
            fetch = fetcher_factory()
        started = probe.start()
        keys = [key_getter(x) for x in batch]
        fetched = time.perf_counter_ns() if started else 0
        found, degraded = fetch(keys)
        if started and PROCESS.on:
            LOOKUP_DURATION.observe(lookup_key, (time.perf_counter_ns() - fetched) / 1e6)
        get = found.get
        out = [combine(x, get(k), degraded) for x, k in zip(batch, keys, strict=True)]
        probe.done(batch, started)
        return out

    return op.flat_map_batch("enrich", up, enrich)
