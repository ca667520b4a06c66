"""What every wire format shares: the validation error and the JSON-object decoder.

Parsers of the topics' JSON (:mod:`models.transaction`, :mod:`models.chat`,
:mod:`models.document`, ...) raise :class:`InvalidEvent` with a reason a person
can act on; the dataflow turns that into a dead letter.
"""

from __future__ import annotations

from typing import Any

import orjson

# 2000-01-01 .. 2100-01-01 in epoch milliseconds: a request time outside is in another unit (s, µs) or made up
MIN_TIME_MS = 946_684_800_000
MAX_TIME_MS = 4_102_444_800_000


class InvalidEvent(ValueError):
    """Raised by a parser: the event is malformed or breaks a rule; the message says why."""


def epoch_ms(value: object, name: str) -> float:
    """``value`` as epoch milliseconds from 2000 to 2100; otherwise :class:`InvalidEvent` naming ``name``.

    Deadlines and promotions are computed from request times: one sent in seconds would
    make every deadline long past, one in microseconds every promotion over.

    >>> epoch_ms(1767225600000, "time")
    1767225600000.0
    >>> epoch_ms(1767225600, "time")
    Traceback (most recent call last):
    ...
    models.wire.InvalidEvent: time must be milliseconds since the epoch, from 2000 to 2100 (got 1767225600)
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not MIN_TIME_MS <= value <= MAX_TIME_MS:
        raise InvalidEvent(f"{name} must be milliseconds since the epoch, from 2000 to 2100 (got {value!r:.40})")
    return float(value)


def json_object(raw: bytes | None) -> dict[str, Any]:
    """Decode a message value that must be a JSON object, or raise :class:`InvalidEvent` saying why.

    >>> json_object(b'{"a": 1}')
    {'a': 1}
    >>> json_object(b"[1]")
    Traceback (most recent call last):
    ...
    models.wire.InvalidEvent: event must be a JSON object
    >>> json_object(b"\\xff\\xfe")
    Traceback (most recent call last):
    ...
    models.wire.InvalidEvent: not valid JSON: the value is not UTF-8 text
    """
    if raw is None:
        raise InvalidEvent("empty message value")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "surrogates" in str(exc) or "utf-8" in str(exc).lower():
            raise InvalidEvent("not valid JSON: the value is not UTF-8 text") from None
        raise InvalidEvent(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidEvent("event must be a JSON object")
    return obj


def four_decimals(x: float) -> float:
    """``x`` rounded to four decimals, as scores are written: ``round(x * 10000) / 10000``.

    ``round(x, 4)`` converts through decimal digits and costs ~0.3 µs; this costs ~0.09, and a decision
    rounds two or three scores. The two differ only where ``x * 10000`` lands within an ulp of a half
    (none in 2,000,000 random scores); then this rounds half to even.

    >>> four_decimals(0.123456), four_decimals(0.99999), four_decimals(1.0)
    (0.1235, 1.0, 1.0)
    """
    return round(x * 10000.0) / 10000.0
