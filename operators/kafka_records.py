"""Plain records that cross the boundary between Kafka and a dataflow."""

from __future__ import annotations

from dataclasses import dataclass, field

Headers = list[tuple[str, bytes]]

ID_HEADER = "sluice.id"  # stable identity of the input a record was made from


def position_id(topic: str, partition: int, offset: int) -> bytes:
    """The identity of a consumed record: ``topic/partition/offset``."""
    return f"{topic}/{partition}/{offset}".encode()


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One consumed Kafka message and its position."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0

    def position_headers(self) -> Headers:
        """Headers that say where this record came from."""
        return [
            (ID_HEADER, position_id(self.topic, self.partition, self.offset)),
            ("source.topic", self.topic.encode()),
            ("source.partition", str(self.partition).encode()),
            ("source.offset", str(self.offset).encode()),
        ]


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """One message to produce."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers = field(default_factory=list)
    partition: int | None = None
