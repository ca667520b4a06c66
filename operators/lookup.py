"""Batched enrichment from the online feature store."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import bytewax.operators as op
from bytewax.dataflow import Stream, operator

from state.feature_store import FeatureStore, Profile

X = TypeVar("X")


@operator
def lookup_profiles(
    step_id: str,
    up: Stream[X],
    store_factory: Callable[[], FeatureStore],
    key_getter: Callable[[X], str],
) -> Stream[tuple[X, Profile | None, bool]]:
    """Attach each item's profile: ``(item, profile or None, redis_unreachable)``.

    One pipelined Redis round trip per runtime batch for the keys the TTL cache
    does not hold. ``None`` means "no profile" (or Redis down, flagged by the
    third value); the caller decides the fallback.

    ```python
    enriched = lookup_profiles("profiles", events, lambda: FeatureStore(url, "card"), lambda e: e.card_id)
    ```
    """
    store: FeatureStore | None = None

    def enrich(batch: list[X]) -> list[tuple[X, Profile | None, bool]]:
        nonlocal store
        if store is None:  # built lazily, in the worker, once
            store = store_factory()
        profiles, down = store.get_many(key_getter(x) for x in batch)
        return [(x, profiles[key_getter(x)], down) for x in batch]

    return op.flat_map_batch("enrich", up, enrich)
