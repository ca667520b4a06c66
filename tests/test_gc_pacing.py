"""Paced garbage collection: collections come from ticks on a clock, cycles still get collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from operators.gc_pacing import BACKSTOP_THRESHOLD, GcPacer


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    """A two-object reference cycle nobody refers to any more (only the collector can free it)."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


@pytest.fixture
def clock() -> Iterator[list[float]]:
    threshold = gc.get_threshold()
    yield [0.0]
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_young_collection_on_the_clock_frees_a_fresh_cycle(clock: list[float]) -> None:
    pacer = GcPacer(interval_s=1.0, full_interval_s=0.0, clock=lambda: clock[0])
    pacer.start()
    assert gc.get_threshold()[0] == BACKSTOP_THRESHOLD  # CPython no longer collects every few batches
    garbage = cycle()
    pacer.tick()
    assert garbage() is not None  # not due yet: nothing collected
    clock[0] = 1.0
    pacer.tick()
    assert garbage() is None and pacer.young == 1 and pacer.young_ms >= 0.0
    pacer.stop()
    assert gc.get_threshold()[0] != BACKSTOP_THRESHOLD


def test_full_collection_frees_a_cycle_that_was_frozen_alive(clock: list[float]) -> None:
    pacer = GcPacer(interval_s=1.0, full_interval_s=10.0, clock=lambda: clock[0])
    pacer.start()
    a, b = Node(), Node()
    a.other, b.other = b, a
    clock[0] = 1.0
    pacer.tick()  # the cycle is alive: it survives and is frozen
    garbage = weakref.ref(a)
    del a, b
    clock[0] = 2.0
    pacer.tick()  # young collections no longer see frozen objects
    assert garbage() is not None
    clock[0] = 10.0
    pacer.tick()
    assert garbage() is None and pacer.full == 1
    pacer.stop()


def test_an_unstarted_or_zero_interval_pacer_does_nothing(clock: list[float]) -> None:
    pacer = GcPacer(interval_s=1.0, clock=lambda: clock[0])
    clock[0] = 100.0
    pacer.tick()
    assert pacer.young == 0
    with pytest.raises(ValueError, match="interval_s"):
        GcPacer(interval_s=0.0).start()
