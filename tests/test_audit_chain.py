"""Tamper-evident audit: the hash chain finds any single change, removal or reordering (property test);
the Kafka sinks chain a topic's records per partition across restarts; ``sluice audit verify`` reports
the first broken record of a tampered copy of the topic."""

from __future__ import annotations

import uuid

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from confluent_kafka import Producer
from hypothesis import given
from hypothesis import strategies as st

from operators.kafka.admin import create_topics, read_all
from operators.kafka.connection import KafkaConnection
from operators.kafka.output import kafka_output
from operators.kafka.records import ID_HEADER, KafkaRecord
from sluice.audit import verify_topic
from sluice.cli import main
from state.hash_chain import ChainHead, Link, canonical_json, link_hash, verify

values = st.lists(
    st.dictionaries(st.sampled_from("abcd"), st.integers(-(2**40), 2**40), max_size=3), min_size=3, max_size=12
)


Row = tuple[int, bytes | None, bytes | None, Link | None]


def _sealed(items: list[dict]) -> list[Row]:
    head = ChainHead(None)
    rows: list[Row] = []
    for i, item in enumerate(items):
        value = canonical_json({"n": i, **item})
        rows.append((i, b"k", value, head.seal(b"k", value)))
    return rows


def _renumbered(rows):
    return [(i, k, v, link) for i, (_, k, v, link) in enumerate(rows)]


def _first_break(rows) -> tuple[int, str] | None:
    found = verify(rows)
    return None if found is None else (found.offset, found.problem)


@given(values, st.data())
def test_any_single_change_removal_or_reordering_is_found_where_it_happened(items, data):
    rows = _sealed(items)
    assert verify(rows) is None
    i = data.draw(st.integers(0, len(rows) - 2))  # the last record: see the anchoring note in state.hash_chain
    off, key, value, link = rows[i]
    assert link is not None
    assert _first_break([*rows[:i], (off, key, (value or b"") + b" ", link), *rows[i + 1 :]]) == (i, "changed")
    rehashed = Link(link.seq, link.prev, link_hash(link.prev, link.seq, key, b"{}"))  # a forger who rehashes it
    assert _first_break([*rows[:i], (off, key, b"{}", rehashed), *rows[i + 1 :]]) == (i, "changed")
    assert _first_break(_renumbered([*rows[:i], *rows[i + 1 :]])) == (i, "removed")
    assert _first_break(_renumbered([*rows[:i], rows[i + 1], rows[i], *rows[i + 2 :]])) == (i, "reordered")
    assert _first_break(_renumbered([*rows[:i], (0, b"k", b"{}", None), *rows[i:]])) == (i, "unchained")


def test_parts_cannot_be_shifted_between_fields_and_a_first_record_must_start_from_genesis():
    prev = "a" * 64
    assert link_hash(prev, 0, b"ab", b"c") != link_hash(prev, 0, b"a", b"bc")  # bytes moved from key to value
    assert link_hash(prev, 1, b"k", b"v") != link_hash(prev[:-1], 11, b"k", b"v")  # from prev to seq
    assert link_hash(prev, 0, None, b"v") != link_hash(prev, 0, b"", b"v")  # no key is not an empty key
    forged = "1" * 64  # a first record that claims to follow something: its own hash is right, its start is not
    value = canonical_json({"n": 0})
    assert _first_break([(0, b"k", value, Link(0, forged, link_hash(forged, 0, b"k", value)))]) == (0, "changed")


def _write(conn: KafkaConnection, topic: str, start: int, count: int, exactly_once: bool) -> None:
    """One run of a flow writing ``count`` records to the chained ``topic`` (2 partitions)."""
    records = [
        KafkaRecord(
            topic, f"case-{n}".encode(), canonical_json({"n": n}), [(ID_HEADER, f"in/{n}".encode())], partition=n % 2
        )
        for n in range(start, start + count)
    ]
    flow = Dataflow("chained")
    kafka_output(
        "out",
        op.input("in", flow, TestingSource(records)),
        conn,
        [topic],
        exactly_once=exactly_once,
        transactional_id_prefix=f"chain-{topic}",
        chained_topics=[topic],
    )
    run_main(flow)


@pytest.mark.parametrize("exactly_once", [False, True], ids=["at-least-once", "exactly-once"])
def test_the_sinks_chain_each_partition_across_restarts(stack, exactly_once):
    conn = KafkaConnection(stack.brokers)
    topic = f"chained-{uuid.uuid4().hex[:8]}"
    create_topics(conn, {topic: 2})
    _write(conn, topic, 0, 30, exactly_once)
    _write(conn, topic, 30, 20, exactly_once)  # a new process: the chain goes on from the partition's last record
    checks = verify_topic(conn, topic)
    assert [c.broken for c in checks] == [None, None]
    assert sum(c.records for c in checks) == 50
    assert all(c.head is not None and c.head.seq == c.records - 1 for c in checks)


def _copy(conn: KafkaConnection, src: str, dst: str, tamper) -> None:
    """Copy ``src`` to ``dst`` partition by partition (headers kept), letting ``tamper`` edit partition 0."""
    create_topics(conn, {dst: 2})
    msgs = read_all(conn, src)
    producer = Producer(conn.producer_config())
    for part in (0, 1):
        ordered = sorted((m for m in msgs if m.partition() == part), key=lambda m: m.offset() or 0)
        rows = [(m.key(), m.value(), m.headers()) for m in ordered]
        for key, value, headers in tamper(rows) if part == 0 else rows:
            producer.produce(dst, key=key, value=value, headers=headers, partition=part)
    assert producer.flush(10) == 0


def _alter(rows):
    key, value, headers = rows[3]
    body = orjson.loads(value)
    return [*rows[:3], (key, canonical_json({**body, "n": -1}), headers), *rows[4:]]


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        (lambda rows: rows, None),
        (_alter, "BROKEN at offset 3 (seq 3): changed"),
        (lambda rows: [*rows[:3], *rows[4:]], "BROKEN at offset 3 (seq 4): removed"),
        (lambda rows: [*rows[:3], rows[4], rows[3], *rows[5:]], "BROKEN at offset 3 (seq 4): reordered"),
    ],
    ids=["intact", "changed", "removed", "reordered"],
)
def test_audit_verify_reports_the_first_tampered_record_of_a_copy(stack, monkeypatch, capsys, tamper, expected):
    conn = KafkaConnection(stack.brokers)
    original = f"audit-{uuid.uuid4().hex[:8]}"
    create_topics(conn, {original: 2})
    _write(conn, original, 0, 40, exactly_once=False)
    copy = f"{original}-copy"
    _copy(conn, original, copy, tamper)
    monkeypatch.setenv("SLUICE_BROKERS", stack.brokers)
    code = main(["audit", "verify", "--topic", copy])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(f"{copy}[0]")]
    if expected is None:
        assert code == 0 and "chain intact" in lines[0] and "every chain holds" in out
    else:
        assert code == 1 and expected in lines[0], out
        assert f"{copy}[1]" in out and "chain intact" in next(x for x in out.splitlines() if x.startswith(f"{copy}[1]"))
