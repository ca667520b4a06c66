"""VersionedModels: the served version goes on serving while a new one loads, and a version that fails to
load is retried on a clock, not on every batch."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from operators.versioned_batch import VersionedBatchLogic, VersionedModels


class Registry:
    """A served-version pointer and a loader that can be held back or made to fail, counting its calls."""

    def __init__(self) -> None:
        self.served = "v1"
        self.broken: set[str] = set()
        self.release = threading.Event()
        self.release.set()
        self.loads: list[str] = []

    def load(self, version: str) -> str:
        self.loads.append(version)
        self.release.wait(10)
        if version in self.broken:
            raise RuntimeError(f"{version}: truncated weights")
        return f"model {version}"


def _until(condition, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_while_a_new_version_loads_the_one_served_before_goes_on_even_if_an_older_one_was_used_since():
    reg = Registry()
    models = VersionedModels(lambda: reg.served, reg.load, check_every_s=0)
    assert models.ready_version() == "v1"
    reg.served = "v2"
    _until(lambda: models.ready_version() == "v2")
    models.get("v1")  # a later step asks for the version an older item was scored with
    reg.release.clear()
    reg.served = "v3"
    assert models.ready_version() == "v2"  # not v1, the one used last
    reg.release.set()
    _until(lambda: models.ready_version() == "v3")


def test_a_version_that_fails_to_load_is_logged_once_and_retried_after_a_while(caplog):
    reg = Registry()
    clock = [0.0]  # the retry clock stands still until the test moves it, however slow the machine
    models = VersionedModels(lambda: reg.served, reg.load, check_every_s=0, retry_after_s=0.5, clock=lambda: clock[0])
    assert models.ready_version() == "v1"
    reg.broken.add("v2")
    reg.served = "v2"
    with caplog.at_level(logging.WARNING, logger="operators.versioned_batch"):
        _until(lambda: (models.ready_version(), models.load_failures)[1] == 1)
        paced_until = time.monotonic() + 0.2
        while time.monotonic() < paced_until:  # every batch of every shard asks, for longer than a load takes
            assert models.ready_version() == "v1"
            time.sleep(0.001)
    assert reg.loads.count("v2") == 1
    assert [r.getMessage() for r in caplog.records] == [
        "model v2 did not load (v2: truncated weights); serving v1, trying again in 0.5s"
    ]
    reg.broken.clear()  # fixed in place
    clock[0] += 0.5
    _until(lambda: models.ready_version() == "v2")
    assert reg.loads.count("v2") == 2


@pytest.mark.parametrize("background", [True, False])
def test_the_first_version_is_loaded_before_anything_is_served(background):
    reg = Registry()
    models = VersionedModels(lambda: reg.served, reg.load, check_every_s=0, background=background)
    assert models.ready_version() == "v1" and models.get("v1") == "model v1"


def test_an_optional_source_never_stalls_or_fails_the_flow_on_its_version(caplog):
    """A shadow candidate: it loads in the background, there is none until it is ready, and one that does
    not load is logged and stays none (the flow keeps deciding) until a loadable one is named."""
    reg = Registry()
    reg.broken.add("v1")
    reg.release.clear()
    models = VersionedModels(lambda: reg.served, reg.load, check_every_s=0, retry_after_s=60, optional=True)
    assert models.ready_version() is None  # loading, not waited for
    reg.release.set()
    with caplog.at_level(logging.WARNING, logger="operators.versioned_batch"):
        _until(lambda: (models.ready_version(), models.load_failures)[1] == 1)
    assert models.ready_version() is None and "model v1 did not load" in caplog.text
    reg.served = "v2"
    _until(lambda: models.ready_version() == "v2")


def test_the_registry_is_read_at_most_every_check_every_s():
    reads: list[str] = []

    def current() -> str:
        reads.append("v1")
        return "v1"

    models = VersionedModels(current, lambda v: f"model {v}", check_every_s=60)
    for _ in range(100):  # every batch of every shard asks
        assert models.ready_version() == "v1"
    assert len(reads) == 1


def test_a_version_used_again_is_still_loaded_while_it_is_among_the_last_keep():
    reg = Registry()
    models = VersionedModels(lambda: reg.served, reg.load, check_every_s=0, keep=2)
    for version in ("v1", "v2", "v1"):
        assert models.get(version) == f"model {version}"
    assert reg.loads == ["v1", "v2"]
    models.get("v3")  # v2 is now the least recently used of three
    models.get("v1")
    assert reg.loads == ["v1", "v2", "v3"]


def _shard(models: VersionedModels[str], resume=None) -> VersionedBatchLogic:
    return VersionedBatchLogic(
        lambda model, version, items: [(version, model, x) for x in items],
        models,
        max_batch=1,
        max_wait=timedelta(0),
        resume=resume,
        now_getter=lambda: datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_a_resumed_shard_scores_with_the_version_its_checkpoint_pinned_until_its_next_checkpoint():
    """A replayed epoch is scored by the version that scored it before the crash, even when the registry
    has promoted another since; the newer one is taken at the next epoch boundary."""
    reg = Registry()
    reg.served = "v2"
    shard = _shard(VersionedModels(lambda: reg.served, reg.load, check_every_s=0, background=False), ([], "v1"))
    assert (shard.version, shard.model) == ("v1", "model v1")
    assert shard.on_batch(["e1"])[0] == [("v1", "model v1", "e1")]
    assert shard.snapshot() == ([], "v2")
    assert shard.on_batch(["e2"])[0] == [("v2", "model v2", "e2")]


def test_a_shard_unpins_when_its_optional_source_names_no_version_any_more():
    """A shadow candidate withdrawn: from the next checkpoint on, no shadow model scores."""
    reg = Registry()
    models = VersionedModels(lambda: reg.served, reg.load, check_every_s=0, background=False, optional=True)
    shard = _shard(models)
    assert shard.version == "v1"
    reg.served = None  # type: ignore[assignment]
    assert shard.snapshot() == ([], None) and shard.model is None
    assert shard.on_batch(["e1"])[0] == [(None, None, "e1")]
