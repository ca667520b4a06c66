"""Micro-batching with a versioned resource (a model) that changes only at checkpoints: hot swap.

A running flow must pick up a newly promoted model without a restart and
without making its output depend on timing. Here each shard *pins* one version:
every batch between two checkpoints is computed with it, and only at a
checkpoint (``snapshot``) does the shard look for a newer one and switch. The
pinned version is part of the snapshot, so after a crash the replayed epoch is
computed with the version that was pinned when its checkpoint was taken: a
``kill -9`` in the middle of a swap resumes on one consistent version, and the
replayed decisions equal the ones the exactly-once sink aborted.

Loading a model can take a while (hundreds of milliseconds for trees and
networks), longer than a latency budget. :class:`VersionedModels` therefore
loads a new version on a background thread and offers it to the shards only
once it is ready: the swap itself costs nothing on the dataflow thread.

A shard that sees no item in an epoch is not snapshotted by Bytewax, so it keeps
its version until it next works; its output still names the version that made
it. Versions stay loaded while any shard may use them (the last ``keep``
versions), so a later step can ask for the version an item was scored with.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from operators.batching import Placement, Shards, by_hash, check_batching
from operators.clock import Clock, utc_now
from operators.microbatch import MicroBatchLogic, per_shard
from operators.probes import Origin, StageProbe

X = TypeVar("X")
Y = TypeVar("Y")
M = TypeVar("M")

VersionedState = tuple[list[X], str | None]  # buffered items, pinned version

log = logging.getLogger(__name__)


class VersionedModels(Generic[M]):
    """Which version should be served (``current``), loaded ahead of use and cached by version.

    ``current`` names the version to serve (it reads a registry pointer, say) and
    is asked at most every ``check_every`` seconds; ``load`` builds the resource
    for a version. ``None`` as a version means "nothing" (no shadow candidate):
    :meth:`get` returns ``None`` for it. While a new version loads, the version
    served before it goes on serving. A version that fails to load is logged and
    tried again after ``retry_after_s``, not on every batch. With ``optional``
    (a shadow candidate: having none is fine) even the first version loads in the
    background, so the flow neither stalls on it nor fails on a broken one: until
    it is loaded, there is none.

    >>> models = VersionedModels(lambda: "v1", lambda v: f"model {v}", check_every_s=0)
    >>> models.ready_version(), models.get("v1")
    ('v1', 'model v1')
    """

    def __init__(
        self,
        current: Callable[[], str | None],
        load: Callable[[str], M],
        check_every_s: float = 2.0,
        keep: int = 3,
        background: bool = True,
        retry_after_s: float = 30.0,
        optional: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.optional = optional
        self._clock = clock  # seconds; tests drive a fake one
        self._current, self._load = current, load
        self.check_every_s, self.keep, self.retry_after_s = check_every_s, keep, retry_after_s
        self._loaded: OrderedDict[str, M] = OrderedDict()
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._wanted: str | None = None
        self._loading: Future[M] | None = None
        self._loading_version: str | None = None
        self._executor = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="sluice-model-load") if background else None
        )
        self._served: str | None = None  # the last version ready_version gave as the one wanted
        self._failed: dict[str, float] = {}  # version -> when its load last failed (monotonic)
        self.load_failures = 0

    def get(self, version: str | None) -> M | None:
        """The resource for ``version``, loading it now if needed (a restored shard's version)."""
        if version is None:
            return None
        with self._lock:
            if version in self._loaded:
                self._loaded.move_to_end(version)
                return self._loaded[version]
        model = self._load(version)
        self._remember(version, model)
        return model

    def _remember(self, version: str, model: M) -> None:
        with self._lock:
            self._loaded[version] = model
            self._loaded.move_to_end(version)
            while len(self._loaded) > self.keep:
                self._loaded.popitem(last=False)

    def ready_version(self) -> str | None:
        """The version to serve now, if it is loaded; otherwise the newest one that is (a swap waits for its
        load). Looks at ``current`` at most every ``check_every_s``."""
        now = self._clock()
        if now - self._checked_at >= self.check_every_s:
            self._checked_at = now
            self._wanted = self._current()
        wanted = self._wanted
        if wanted is None:
            return None
        with self._lock:
            if wanted in self._loaded:
                self._served = wanted
                return wanted
            nothing_loaded = not self._loaded
        if self._executor is None or (nothing_loaded and not self.optional):  # nothing to serve meanwhile
            self.get(wanted)
            self._served = wanted
            return wanted
        self._start_loading(wanted, now)
        with self._lock:  # the version served before, not the one a later step used last (LRU order)
            if self._served in self._loaded:
                return self._served
            return None if self.optional else next(reversed(self._loaded), None)

    def _start_loading(self, version: str, now: float) -> None:
        assert self._executor is not None
        if self._loading is not None and self._loading_version == version:
            if not self._loading.done():
                return
            error = self._loading.exception()
            self._loading = None
            if error is not None:  # keep serving the old version; try again later
                self._failed[version] = now
                self.load_failures += 1
                log.warning("model %s did not load (%s); serving %s, trying again in %gs",
                            version, error, self._served, self.retry_after_s)  # fmt: skip
            return
        if now - self._failed.get(version, float("-inf")) < self.retry_after_s:
            return
        self._loading_version = version
        log.info("model %s: loading in the background; %s serves meanwhile", version, self._served)
        self._loading = self._executor.submit(self._load_and_remember, version)

    def _load_and_remember(self, version: str) -> M:
        model = self._load(version)
        self._remember(version, model)
        return model


class VersionedBatchLogic(StatefulBatchLogic[X, Y, VersionedState[X]]):
    """One shard: a :class:`operators.microbatch.MicroBatchLogic` whose batch function sees the pinned version,
    and the pin, moved only at checkpoints."""

    def __init__(
        self,
        fn: Callable[[M | None, str | None, list[X]], Sequence[Y]],
        models: VersionedModels[M],
        max_batch: int,
        max_wait: timedelta,
        resume: VersionedState[X] | None,
        now_getter: Clock,
        probe: StageProbe[X] | None = None,
    ) -> None:
        self.fn, self.models = fn, models
        buffered, version = resume if resume is not None else ([], models.ready_version())
        self._pin(version)
        self.batches: MicroBatchLogic[X, Y] = MicroBatchLogic(
            self._call, max_batch, max_wait, buffered, now_getter, probe
        )

    def _pin(self, version: str | None) -> None:
        self.version = version
        self.model = self.models.get(version)

    def _call(self, items: list[X]) -> Sequence[Y]:
        return self.fn(self.model, self.version, items)

    def on_batch(self, values: list[X]) -> tuple[list[Y], bool]:
        # look for a newer version now (at most every check_every_s), so that its background load is done by the
        # checkpoint that switches to it: one epoch after a promote instead of two
        self.models.ready_version()
        return self.batches.on_batch(values)

    def on_notify(self) -> tuple[list[Y], bool]:
        return self.batches.on_notify()

    def on_eof(self) -> tuple[list[Y], bool]:
        return self.batches.on_eof()

    def notify_at(self) -> datetime | None:
        return self.batches.notify_at()

    def snapshot(self) -> VersionedState[X]:
        ready = self.models.ready_version()
        if ready != self.version:
            self._pin(ready)  # the epoch boundary: items from here on, replayed or not, use the new version
        return self.batches.snapshot(), self.version


@operator
def versioned_batch(
    step_id: str,
    up: Stream[X],
    fn: Callable[[M | None, str | None, list[X]], Sequence[Y]],
    models: VersionedModels[M],
    shard_key: Callable[[X], str],
    max_batch: int = 256,
    max_wait: timedelta = timedelta(milliseconds=5),
    shards: Shards = 8,
    now_getter: Clock = utc_now,
    origin: Origin[X] | None = None,
    placement: Placement = by_hash,
) -> Stream[Y]:
    """Run ``fn(model, version, batch)`` on micro-batches of ``up`` with the version pinned by each shard;
    a newly served version is picked up at the next checkpoint (see the module docstring). Instrumented, and
    its shards placed (``placement``), like :func:`operators.microbatch.micro_batch`.

    ```python
    served = VersionedModels(registry.served, load_cascade)
    scored = versioned_batch("stage1", events, score_stage1, served, lambda e: e.card_id)
    ```
    """
    check_batching(max_batch, shards)
    probe: StageProbe[X] = StageProbe(step_id, origin)

    def builder(resume: VersionedState[X] | None) -> VersionedBatchLogic[X, Y]:
        return VersionedBatchLogic(fn, models, max_batch, max_wait, resume, now_getter, probe)

    return per_shard(up, shard_key, shards, builder, placement)
