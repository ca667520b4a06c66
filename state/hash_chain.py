"""Tamper-evident logs: records hash-chained per partition, and the check that finds the first broken link.

Each record carries three headers: ``chain.seq`` (0, 1, 2, ... in its partition),
``chain.prev`` (the previous record's hash; 64 zeros for the first) and
``chain.hash`` = SHA-256 over a canonical encoding of (prev, seq, key, value).
The value is the record's bytes exactly as written, so writers use one canonical
JSON encoding (sorted keys, :func:`canonical_json`) and a reader can recompute
every hash from what it reads.

The links are made where the order is final, in the sink partition that writes
the records (:mod:`operators.kafka.sink`), continuing from the last record
already in the partition; so a restarted writer, a replay or a rescaled flow
extends one unbroken chain.

:func:`verify` reads a partition's records in offset order and reports the
first that was **changed** (its content no longer matches its hash, or its hash
was recomputed and the next record still points at the old one), **removed**
(a sequence number is missing) or **reordered** (a record sits before one it
follows). A chain proves nothing about records appended by someone who could
recompute every later hash: keep the head hashes ``sluice audit verify`` prints
somewhere else (a ticket, a second store) to anchor them.

>>> head = ChainHead(None)
>>> records = [(i, b"k", canonical_json({"n": i}), head.seal(b"k", canonical_json({"n": i}))) for i in range(4)]
>>> verify(records) is None
True
>>> swapped = [records[0], records[2], records[1], records[3]]
>>> verify([(i, k, v, link) for i, (_, k, v, link) in enumerate(swapped)]).problem
'reordered'
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

SEQ_HEADER = "chain.seq"
PREV_HEADER = "chain.prev"
HASH_HEADER = "chain.hash"
GENESIS = "0" * 64
_DOMAIN = b"sluice-hash-chain/1\n"

HeaderPairs = Sequence[tuple[str, Any]] | Mapping[str, Any]  # as a producer takes them or a consumer hands them


def canonical_json(obj: Any) -> bytes:
    """The one encoding chained records use: compact JSON with sorted keys.

    >>> canonical_json({"b": 1, "a": [2, {"d": 3, "c": 4}]})
    b'{"a":[2,{"c":4,"d":3}],"b":1}'
    """
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def link_hash(prev: str, seq: int, key: bytes | None, value: bytes | None) -> str:
    """SHA-256 over (prev, seq, key, value), each length-prefixed, so no bytes can move from one part to
    another. A missing key is hashed as the one byte 0xff, which no UTF-8 key (every key Sluice writes) can
    be; a missing value as an empty one (chained records always have a value)."""
    h = hashlib.sha256(_DOMAIN)
    for part in (prev.encode(), b"%d" % seq, key if key is not None else b"\xff", value or b""):
        h.update(b"%d:" % len(part))
        h.update(part)
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Link:
    """A record's place in its partition's chain."""

    seq: int
    prev: str
    hash: str

    def headers(self) -> list[tuple[str, bytes]]:
        return [(SEQ_HEADER, b"%d" % self.seq), (PREV_HEADER, self.prev.encode()), (HASH_HEADER, self.hash.encode())]

    @classmethod
    def from_headers(cls, headers: HeaderPairs | None) -> Link | None:
        """The link a record carries, or None when it has none (or a malformed one)."""
        found: dict[str, bytes] = {}
        pairs = headers.items() if isinstance(headers, Mapping) else (headers or ())
        for name, value in pairs:
            if name in (SEQ_HEADER, PREV_HEADER, HASH_HEADER) and name not in found:
                found[name] = value.encode() if isinstance(value, str) else bytes(value or b"")
        try:
            return cls(int(found[SEQ_HEADER]), found[PREV_HEADER].decode(), found[HASH_HEADER].decode())
        except (KeyError, ValueError):
            return None


class ChainHead:
    """The end of one partition's chain, as a writer extends it (mutable: one per sink partition)."""

    def __init__(self, last: Link | None) -> None:
        self.last = last

    def seal(self, key: bytes | None, value: bytes | None) -> Link:
        """The link of the next record, which becomes the head."""
        seq, prev = (0, GENESIS) if self.last is None else (self.last.seq + 1, self.last.hash)
        self.last = Link(seq, prev, link_hash(prev, seq, key, value))
        return self.last


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first record at which a partition's chain does not hold, and what went wrong there."""

    offset: int
    seq: int | None
    problem: str  # changed | removed | reordered | unchained
    detail: str


Record = tuple[int, bytes | None, bytes | None, Link | None]  # offset, key, value, link


def verify(records: Iterable[Record]) -> ChainBreak | None:
    """The first break in one partition's records (in offset order), or None if the chain holds.

    The first record is trusted to start the chain only if its sequence number
    is 0: a log whose first records were removed reports that.
    """
    rows = list(records)
    present = {link.seq for _, _, _, link in rows if link is not None}
    prev: Link | None = None
    prev_offset = -1
    for offset, key, value, link in rows:
        if link is None:
            return ChainBreak(offset, None, "unchained", "the record carries no chain headers: it was inserted")
        expected_seq = 0 if prev is None else prev.seq + 1
        if link.seq > expected_seq:
            missing = [s for s in range(expected_seq, link.seq) if s not in present]
            if len(missing) < link.seq - expected_seq:  # some "missing" record sits further on
                return ChainBreak(
                    offset, link.seq, "reordered", f"seq {link.seq} comes before seq {expected_seq}, which it follows"
                )
            return ChainBreak(
                offset, link.seq, "removed", f"seq {expected_seq}..{link.seq - 1} missing before this record"
            )
        if link.seq < expected_seq:
            return ChainBreak(offset, link.seq, "reordered", f"seq {link.seq} comes after seq {expected_seq - 1}")
        if link_hash(link.prev, link.seq, key, value) != link.hash:
            return ChainBreak(offset, link.seq, "changed", "its content does not match its hash")
        if prev is None and link.prev != GENESIS:
            return ChainBreak(offset, link.seq, "changed", "the first record does not start from the genesis hash")
        if prev is not None and link.prev != prev.hash:
            return ChainBreak(
                prev_offset,
                prev.seq,
                "changed",
                "its hash was rewritten to match new content: the next record still points at the original",
            )
        prev, prev_offset = link, offset
    return None
