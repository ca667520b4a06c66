"""Batched enrichment: one lookup call per runtime batch, for every item's key at once.

The lookup is any ``fetch_many(keys) -> (values by key, degraded)`` function,
typically a pipelined read of an online store (:class:`state.feature_store.FeatureStore`):
batching turns a round trip per event into a round trip per batch, which is
what makes a remote lookup affordable at tens of thousands of events per
second. The operator knows nothing about what is fetched; a missing value is
``None`` and the caller decides the fallback.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TypeVar

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

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
) -> Stream[Y]:
    """Attach each item's looked-up value: ``combine(item, value or None, degraded)``,
    by default the tuple ``(item, value, degraded)``.

    ``fetcher_factory`` is called once per worker, lazily, on the worker (so a
    client with sockets is never pickled); ``degraded`` is what the fetcher
    reported for the batch (e.g. the store was unreachable). ``combine`` builds
    the item downstream steps want, saving a step per event on hot paths.

    ```python
    enriched = enrich_batch("profiles", events, lambda: FeatureStore(url, "card").get_many, lambda e: e.card_id)
    ```
    """
    fetch: FetchMany[K, V] | None = None

    def enrich(batch: list[X]) -> list[Y]:
        nonlocal fetch
        if fetch is None:
            fetch = fetcher_factory()
        keys = [key_getter(x) for x in batch]
        found, degraded = fetch(keys)
        get = found.get
        return [combine(x, get(k), degraded) for x, k in zip(batch, keys, strict=True)]

    return op.flat_map_batch("enrich", up, enrich)
