"""Dead-lettering: bad input leaves the flow with its reason instead of crashing it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import bytewax.operators as op
import orjson
from bytewax.dataflow import Stream, operator

from operators.kafka_records import KafkaRecord, SourceRecord

T = TypeVar("T")


class InvalidEvent(ValueError):
    """Raised by a parser: the event is malformed or breaks a rule; the message says why."""


def json_object(raw: bytes | None) -> dict[str, Any]:
    """Decode a message value that must be a JSON object, or raise :class:`InvalidEvent` saying why.

    >>> json_object(b'{"a": 1}')
    {'a': 1}
    >>> json_object(b"[1]")
    Traceback (most recent call last):
    ...
    operators.dead_letter.InvalidEvent: event must be a JSON object
    """
    if raw is None:
        raise InvalidEvent("empty message value")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise InvalidEvent("event must be a JSON object")
    return obj


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An input that could not be processed, with where it came from and why."""

    reason: str
    step: str
    source: SourceRecord

    def to_record(self, topic: str) -> KafkaRecord:
        """The original bytes, with the reason and the source position in headers."""
        src = self.source
        return KafkaRecord(
            topic=topic,
            key=src.key,
            value=src.value,
            headers=[
                ("dlq.reason", self.reason.encode()),
                ("dlq.step", self.step.encode()),
                *src.position_headers(),
            ],
        )


@dataclass(frozen=True)
class ParseOut(Generic[T]):
    """Streams out of :func:`parse_or_dead_letter`."""

    ok: Stream[tuple[SourceRecord, T]]
    dead: Stream[DeadLetter]


@operator
def parse_or_dead_letter(step_id: str, up: Stream[SourceRecord], parser: Callable[[bytes | None], T]) -> ParseOut[T]:
    """Parse each record's value; records the parser rejects go to ``dead`` with the reason.

    ``parser`` raises :class:`InvalidEvent` (or any ``ValueError``) for bad input. Any
    other exception is a bug and still fails the flow.
    """

    def parse_batch(batch: list[SourceRecord]) -> list[tuple[SourceRecord, T] | DeadLetter]:
        out: list[tuple[SourceRecord, T] | DeadLetter] = []
        for rec in batch:
            try:
                out.append((rec, parser(rec.value)))
            except ValueError as exc:
                out.append(DeadLetter(str(exc) or type(exc).__name__, step_id, rec))
        return out

    parsed = op.flat_map_batch("parse", up, parse_batch)
    split = op.branch("split", parsed, lambda x: isinstance(x, DeadLetter))
    return ParseOut(ok=split.falses, dead=split.trues)  # type: ignore[arg-type]
