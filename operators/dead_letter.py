"""Dead-lettering: bad input leaves the flow with its reason instead of crashing it.

A dead letter carries the original bytes, the reason, the step that rejected
it and the source position (headers), so it can be inspected and replayed. A
value too large to be written again (the broker accepted it once, but the
dead-letter topic's limit, or the producer's, is lower) is replaced by a
reference: its position, size, SHA-256 and first bytes, so nothing about it is
lost except what the original topic still holds.

Every dead letter is counted when its record is made (``sluice_dead_letters_total``
by step and reason class) and keeps the input's ``traceparent``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import bytewax.operators as op
import orjson
from bytewax.dataflow import Stream, operator

from operators.kafka.records import KafkaRecord, SourceRecord, header_value
from operators.metrics import DEAD_LETTERS, PROCESS, reason_class
from operators.probes import StageProbe, stage_name
from operators.tracing import trace_headers

T = TypeVar("T")

# a dead letter's own headers, beside the input's position and trace (``sluice dlq`` reads them back by name)
REASON_HEADER = "dlq.reason"
STEP_HEADER = "dlq.step"
REFERENCE_HEADER = "dlq.reference"  # "1": the value is a reference to the original, which was too large
DECIDED_HEADER = "dlq.decided"  # "1": a copy of an input the flow also processed
KEY_TRUNCATED_HEADER = "dlq.key_truncated"  # "1": the key was cut to REFERENCE_PREFIX_BYTES
# headers ``sluice dlq redrive`` puts on an input it sends back, which a dead letter made from it again keeps:
REDRIVE_ATTEMPT = "redrive.attempt"  # how many times the input has been sent back
REDRIVE_OF = "redrive.of"  # the ``sluice.id`` of the input as it first arrived
REDRIVE_HEADERS = (REDRIVE_ATTEMPT, REDRIVE_OF)
MAX_DEAD_LETTER_BYTES = 900_000  # under the 1 MB Kafka default, with room for headers
REFERENCE_PREFIX_BYTES = 1024


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An input that could not be processed, with where it came from and why."""

    reason: str
    step: str
    source: SourceRecord
    # the flow also processed this input (an event decided from its window but kept for inspection): the
    # record says so (``dlq.decided: 1``), and ``sluice dlq redrive`` never sends it back
    decided: bool = False

    def to_record(self, topic: str, max_bytes: int = MAX_DEAD_LETTER_BYTES) -> KafkaRecord:
        """The original bytes (or a reference to them when too large), reason, position and trace in headers.

        >>> src = SourceRecord("tx", 0, 7, b"k", b"x" * 50)
        >>> rec = DeadLetter("too big", "parse", src).to_record("dlq", max_bytes=10)
        >>> orjson.loads(rec.value)["size"], dict(rec.headers)["dlq.reference"]
        (50, b'1')
        >>> long_key = DeadLetter("bad", "parse", SourceRecord("tx", 0, 8, b"k" * 2000, b"{}")).to_record("dlq")
        >>> len(long_key.key), dict(long_key.headers)["dlq.key_truncated"]
        (1024, b'1')
        >>> again = SourceRecord("tx", 0, 9, b"k", b"{}", 0, [(REDRIVE_ATTEMPT, b"2")])  # sent back twice already
        >>> dict(DeadLetter("still unknown", "items", again).to_record("dlq").headers)[REDRIVE_ATTEMPT]
        b'2'
        """
        src = self.source
        if PROCESS.on:
            DEAD_LETTERS.add((stage_name(self.step), reason_class(self.reason)))
        headers = [
            (REASON_HEADER, self.reason.encode()),
            (STEP_HEADER, self.step.encode()),
            *src.position.headers(),
            *trace_headers(src),
        ]
        if self.decided:
            headers.append((DECIDED_HEADER, b"1"))
        for name in REDRIVE_HEADERS if src.headers else ():  # a redriven input failed again: count on from here
            kept = header_value(src.headers, name)
            if kept is not None:
                headers.append((name, kept))
        value = src.value
        if value is not None and len(value) > max_bytes:
            value = orjson.dumps(
                {
                    "reference": src.position.id.decode(),
                    "size": len(value),
                    "sha256": hashlib.sha256(value).hexdigest(),
                    "prefix": value[:REFERENCE_PREFIX_BYTES].decode("utf-8", "replace"),
                }
            )
            headers.append((REFERENCE_HEADER, b"1"))
        key = src.key
        if key is not None and len(key) > REFERENCE_PREFIX_BYTES:  # cut: a redrive must not send it to another key
            key = key[:REFERENCE_PREFIX_BYTES]
            headers.append((KEY_TRUNCATED_HEADER, b"1"))
        return KafkaRecord(topic=topic, key=key, value=value, headers=headers)


def _itself(rec: SourceRecord) -> SourceRecord:
    return rec


@dataclass(frozen=True)
class ParseOut(Generic[T]):
    """Streams out of :func:`parse_or_dead_letter`."""

    ok: Stream[tuple[SourceRecord, T]]
    dead: Stream[DeadLetter]


@operator
def parse_or_dead_letter(step_id: str, up: Stream[SourceRecord], parser: Callable[[bytes | None], T]) -> ParseOut[T]:
    """Parse each record's value; records the parser rejects go to ``dead`` with the reason.

    ``parser`` raises ``ValueError`` (e.g. :class:`models.wire.InvalidEvent`) for bad
    input. Any other exception is a bug and still fails the flow. Instrumented as
    stage ``step_id`` (:mod:`operators.probes`: items, time, the records' age, spans).
    """
    probe: StageProbe[SourceRecord] = StageProbe(step_id, _itself)

    def parse_batch(batch: list[SourceRecord]) -> list[tuple[SourceRecord, T] | DeadLetter]:
        started = probe.start()
        out: list[tuple[SourceRecord, T] | DeadLetter] = []
        for rec in batch:
            try:
                out.append((rec, parser(rec.value)))
            except ValueError as exc:
                out.append(DeadLetter(str(exc) or type(exc).__name__, step_id, rec))
        probe.done(batch, started)
        return out

    parsed = op.flat_map_batch("parse", up, parse_batch)
    # split per batch (one list comprehension each), not with a branch that calls a predicate per item
    ok = op.flat_map_batch("ok", parsed, lambda xs: [x for x in xs if not isinstance(x, DeadLetter)])
    dead = op.flat_map_batch("dead", parsed, lambda xs: [x for x in xs if isinstance(x, DeadLetter)])
    return ParseOut(ok=ok, dead=dead)  # type: ignore[arg-type]
