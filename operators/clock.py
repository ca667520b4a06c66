"""The clock stateful logic reads, passed in so that tests can drive time instead of sleeping.

Every logic that reads the time takes a ``now_getter`` (as Bytewax's own
``_CollectLogic`` does); tests pass ``bytewax.testing.TimeTestingGetter.get``
and move it forward.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The system clock, timezone-aware (Bytewax's notify times must be UTC)."""
    return datetime.now(UTC)
