"""``sluice audit verify --topic audit``: re-read a hash-chained topic and report the first broken record.

Every partition's records are read in offset order (committed records only)
and checked link by link (:func:`state.hash_chain.verify`). For each partition
it prints the record count and the head hash (write the heads down somewhere
else to anchor them: a chain alone cannot show that its whole tail was
rewritten by someone recomputing every hash), or the first record that was
changed, removed or reordered. Exit code 0 when every chain holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from operators.kafka.admin import list_partitions, read_to_end
from operators.kafka.connection import KafkaConnection
from sluice.settings import ReviewSettings
from state.hash_chain import ChainBreak, Link, verify


@dataclass(frozen=True)
class PartitionCheck:
    """One partition's verdict: how many records, the head of the chain, and the first break if any."""

    partition: int
    records: int
    head: Link | None
    broken: ChainBreak | None


def verify_topic(conn: KafkaConnection, topic: str, timeout_s: float = 120.0) -> list[PartitionCheck]:
    """Check every partition of ``topic``."""
    out = []
    for partition in list_partitions(conn, topic):
        msgs, _ = read_to_end(conn, topic, {partition: 0}, timeout_s)
        rows = [(m.offset() or 0, m.key(), m.value(), Link.from_headers(m.headers())) for m in msgs]
        head = rows[-1][3] if rows else None
        out.append(PartitionCheck(partition, len(rows), head, verify(rows)))
    return out


def describe(topic: str, check: PartitionCheck) -> str:
    where = f"{topic}[{check.partition}]"
    if check.broken is not None:
        b = check.broken
        seq = f" (seq {b.seq})" if b.seq is not None else ""
        return f"{where}: BROKEN at offset {b.offset}{seq}: {b.problem}: {b.detail}"
    if check.head is None:
        return f"{where}: empty"
    return f"{where}: {check.records} records, chain intact, head seq {check.head.seq} hash {check.head.hash}"


def run(args: argparse.Namespace) -> int:
    settings = ReviewSettings.from_env()
    topic = args.topic or settings.audit_topic
    checks = verify_topic(settings.connection(), topic, args.timeout)
    for check in checks:
        print(describe(topic, check))
    broken = [c for c in checks if c.broken is not None]
    print(f"{topic}: {'BROKEN in ' + str(len(broken)) + ' partition(s)' if broken else 'every chain holds'}")
    return 1 if broken else 0
