"""What every wire format shares: the validation error and the JSON-object decoder.

Parsers of the topics' JSON (:mod:`models.transaction`, :mod:`models.chat`,
:mod:`models.document`, ...) raise :class:`InvalidEvent` with a reason a person
can act on; the dataflow turns that into a dead letter.
"""

from __future__ import annotations

from typing import Any

import orjson


class InvalidEvent(ValueError):
    """Raised by a parser: the event is malformed or breaks a rule; the message says why."""


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
