"""Plain records that cross the boundary between Kafka and a dataflow."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from state.tuple_pickle import tuple_pickled

Headers = list[tuple[str, bytes]]

ID_HEADER = "sluice.id"  # stable identity of the input a record was made from


@dataclass(frozen=True, slots=True)
class Position:
    """Where a consumed record sits: topic, partition, offset.

    Its :attr:`id` is the stable identity every output made from the record
    carries (``sluice.id``), which the exactly-once sink uses to recognise
    records already committed.

    >>> pos = Position("tx", 2, 41)
    >>> pos.id
    b'tx/2/41'
    >>> [name for name, _ in pos.headers()]
    ['sluice.id', 'source.topic', 'source.partition', 'source.offset']
    """

    topic: str
    partition: int
    offset: int

    @property
    def id(self) -> bytes:
        return f"{self.topic}/{self.partition}/{self.offset}".encode()

    def headers(self) -> Headers:
        """Headers that say where a record came from (and give its identity)."""
        topic, partition, offset = self.topic.encode(), b"%d" % self.partition, b"%d" % self.offset
        return [
            (ID_HEADER, b"%s/%s/%s" % (topic, partition, offset)),
            ("source.topic", topic),
            ("source.partition", partition),
            ("source.offset", offset),
        ]


# not frozen: a frozen dataclass sets each field through object.__setattr__ (5x the __init__ cost), and
# this is made for every event; treat it as immutable
@tuple_pickled  # crosses processes at keyed steps
@dataclass(slots=True)
class SourceRecord:
    """One consumed Kafka message and its position."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0
    headers: AnyHeaders = None

    @property
    def position(self) -> Position:
        return Position(self.topic, self.partition, self.offset)

    def identity(self) -> tuple[str, bytes]:
        """Just the ``sluice.id`` header of :meth:`Position.headers` (for outputs that need no more).

        >>> SourceRecord("tx", 2, 41, None, b"{}").identity()
        ('sluice.id', b'tx/2/41')
        """
        return ID_HEADER, b"%s/%d/%d" % (self.topic.encode(), self.partition, self.offset)

    def header(self, name: str) -> bytes | None:
        """The first header called ``name``, if any."""
        return header_value(self.headers, name)


# not frozen: a frozen dataclass sets each field through object.__setattr__ (5x the __init__ cost), and
# this is made for every event; treat it as immutable
@tuple_pickled  # crosses processes at keyed steps
@dataclass(slots=True)
class KafkaRecord:
    """One message to produce."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)
    partition: int | None = None


AnyHeaders = Sequence[tuple[str, Any]] | Mapping[str, Any] | None  # what confluent-kafka hands back


def header_value(headers: AnyHeaders, name: str) -> bytes | None:
    """The first header ``name`` (as bytes) of a record or a consumed message.

    >>> header_value([("a", b"1"), ("b", b"2")], "b")
    b'2'
    """
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in pairs:
        if key == name:
            return value.encode() if isinstance(value, str) else value
    return None
