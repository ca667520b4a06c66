"""``sluice dlq``: dead letters summarized, listed and redriven at most once, against the real broker.

The dead letters are made by :class:`operators.dead_letter.DeadLetter`, the code every flow uses, and
produced to a topic of this test's own (the personalization flow's test redrives letters a running flow
made, once their cause is fixed)."""

from __future__ import annotations

import uuid
from typing import Any, cast

import orjson
import pytest
from confluent_kafka import Producer

from operators.dead_letter import REDRIVE_ATTEMPT, DeadLetter
from operators.kafka.admin import create_topics, read_all
from operators.kafka.records import SourceRecord
from sluice.cli import main
from sluice.dead_letters import (
    REDRIVE_FROM,
    REDRIVE_OF,
    LetterTail,
    RedriveFenced,
    Redriver,
    Selection,
    ledger_topic,
    plan,
    read_letters,
)
from sluice.local.stack import LocalStack
from sluice.settings import FlowSettings

TRACE = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture()
def topics(stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> tuple[FlowSettings, str, str, str]:
    """A source topic, a staging topic and a dead-letter topic holding five letters from the source:
    two unknown items (one with a trace), a parse failure, a letter too large to hold its bytes, and one whose
    source topic header is missing."""
    monkeypatch.setenv("SLUICE_BROKERS", stack.brokers)
    tag = uuid.uuid4().hex[:8]
    source, staging, dlq = f"in-{tag}", f"staging-{tag}", f"dlq-{tag}"
    settings = FlowSettings(brokers=stack.brokers)
    create_topics(settings.connection(), {source: 2, staging: 1, dlq: 1})
    letters = [
        DeadLetter("unknown item 'i1': it is not in the catalogue", "items",
                   SourceRecord(source, 0, 3, b"u1", b'{"item_id":"i1"}', 0, [("traceparent", TRACE)])),
        DeadLetter("unknown item 'i2': it is not in the catalogue", "items",
                   SourceRecord(source, 1, 8, b"u2", b'{"item_id":"i2"}')),
        DeadLetter("not valid JSON: unexpected end of data", "parse", SourceRecord(source, 0, 4, b"u1", b'{"item')),
        DeadLetter("unknown item 'i3': it is not in the catalogue", "items",
                   SourceRecord(source, 1, 9, b"u3", b"x" * 2000)),
    ]  # fmt: skip
    records = [d.to_record(dlq, max_bytes=1000) for d in letters]  # the last one becomes a reference
    producer = Producer(settings.connection().producer_config())
    for rec in records:
        producer.produce(rec.topic, key=rec.key, value=rec.value, headers=[*rec.headers])
    no_source: list[tuple[str, str | bytes | None]] = [
        ("dlq.reason", b"unknown item 'i4': it is not in the catalogue"),
        ("dlq.step", b"items"),
    ]
    producer.produce(dlq, key=b"u4", value=b'{"item_id":"i4"}', headers=no_source)
    assert producer.flush(30) == 0
    return settings, source, staging, dlq


def _bodies(settings: FlowSettings, topic: str) -> list[tuple[bytes | None, bytes | None, dict[str, bytes]]]:
    msgs = sorted(read_all(settings.connection(), topic), key=lambda m: (m.partition(), m.offset()))
    return [(m.key(), m.value(), dict(cast(list[tuple[str, bytes]], m.headers() or []))) for m in msgs]


def _lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines()]


def test_summary_groups_by_step_and_reason_and_list_shows_each_letter(topics, capsys):
    settings, source, _, dlq = topics
    assert main(["dlq", "summary", "--topic", dlq]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{dlq}: 5 dead letters, 0 redriven")
    assert out[2].split()[:4] == ["4", "0", "items", "unknown"]  # the largest group first
    assert out[3].split()[:4] == ["1", "0", "parse", "not"]
    assert main(["dlq", "summary", "--topic", dlq, "--json"]) == 0
    groups = _lines(capsys.readouterr().out)
    assert [(g["step"], g["reason_class"], g["count"]) for g in groups] == [
        ("items", "unknown item", 4),
        ("parse", "not valid JSON", 1),
    ]
    assert groups[0]["source_topics"] == {source: 3, "?": 1}

    assert main(["dlq", "list", "--topic", dlq, "--reason", "UNKNOWN item", "--last", "3"]) == 0
    rows = _lines(capsys.readouterr().out)
    assert [r["id"] for r in rows] == [f"{dlq}/0/{i}" for i in (1, 3, 4)]  # the last 3 of the 4 selected
    assert rows[0] == {
        "id": f"{dlq}/0/1", "step": "items", "reason": "unknown item 'i2': it is not in the catalogue",
        "origin": f"{source}/1/8", "source_topic": source, "timestamp_ms": rows[0]["timestamp_ms"],
        "redriven": False, "key": "u2", "value": '{"item_id":"i2"}', "value_bytes": 16,
    }  # fmt: skip
    assert rows[1]["reference"] is True and orjson.loads(rows[1]["value"])["size"] == 2000


def test_redrive_sends_the_original_bytes_back_once_whatever_the_selection(topics, capsys):
    settings, source, staging, dlq = topics
    assert main(["dlq", "redrive", "--topic", dlq]) == 2  # no selection: refused, nothing sent
    assert main(["dlq", "redrive", "--topic", dlq, "--reason", "unknown item", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"{dlq}: would redrive 2 dead letters: 2 to {source} (step items)",
        f"{dlq}: left: holding a reference, not the bytes (the original is at its source position) 1, "
        "without a source topic (use --to) 1, not selected 1",
    ]
    assert _bodies(settings, source) == []  # a dry run sends nothing

    assert main(["dlq", "redrive", "--topic", dlq, "--reason", "unknown item"]) == 0
    assert capsys.readouterr().out.startswith(f"{dlq}: redrove 2 dead letters: 2 to {source}")
    sent = _bodies(settings, source)
    assert sorted((k, v) for k, v, _ in sent) == [(b"u1", b'{"item_id":"i1"}'), (b"u2", b'{"item_id":"i2"}')]
    by_key = {k: h for k, _, h in sent}
    assert by_key[b"u1"] == {
        "traceparent": TRACE,
        REDRIVE_OF: f"{source}/0/3".encode(),
        REDRIVE_FROM: f"{dlq}/0/0".encode(),
        REDRIVE_ATTEMPT: b"1",
    }
    assert by_key[b"u2"][REDRIVE_OF] == f"{source}/1/8".encode() and "traceparent" not in by_key[b"u2"]
    ledger = _bodies(settings, ledger_topic(dlq))
    assert sorted(k or b"" for k, _, _ in ledger) == [f"{dlq}/0/0".encode(), f"{dlq}/0/1".encode()]
    assert {orjson.loads(v or b"{}")["to"] for _, v, _ in ledger} == {source}

    # the same selection again, then an overlapping one: nothing is sent twice
    assert main(["dlq", "redrive", "--topic", dlq, "--reason", "unknown item"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{dlq}: redrove nothing"
    assert main(["dlq", "redrive", "--topic", dlq, "--all", "--to", staging]) == 0
    out = capsys.readouterr().out
    assert f"redrove 2 dead letters: 2 to {staging} (step items 1, step parse 1)" in out and "already redriven 2" in out
    assert len(_bodies(settings, source)) == 2
    assert sorted(v or b"" for _, v, _ in _bodies(settings, staging)) == [b'{"item', b'{"item_id":"i4"}']
    assert main(["dlq", "summary", "--topic", dlq]) == 0
    assert capsys.readouterr().out.startswith(f"{dlq}: 5 dead letters, 4 redriven")

    # --again sends a letter redriven before; --limit bounds a run
    assert main(["dlq", "redrive", "--topic", dlq, "--step", "items", "--again", "--limit", "1"]) == 0
    again = _bodies(settings, source)
    assert sorted(k or b"" for k, _, _ in again) == [b"u1", b"u1", b"u2"]  # the first letter of the step, again


def test_a_retriers_tail_reads_only_the_letters_appended_since_its_last_cycle(topics):
    """A retrier's cycle costs what is new, not the whole dead-letter topic: the tail returns the five letters,
    then exactly the one dead-lettered after them, then nothing."""
    settings, source, _, dlq = topics
    tail = LetterTail(settings.connection(), dlq, 30)
    assert [letter.id for letter in tail.read_new()] == [f"{dlq}/0/{i}" for i in range(5)] and tail.ends == {0: 5}
    late = DeadLetter("unknown item 'i5': it is not in the catalogue", "items",
                      SourceRecord(source, 0, 11, b"u5", b'{"item_id":"i5"}')).to_record(dlq, max_bytes=1000)  # fmt: skip
    producer = Producer(settings.connection().producer_config())
    producer.produce(late.topic, key=late.key, value=late.value, headers=[*late.headers])
    assert producer.flush(30) == 0
    new = tail.read_new()
    assert [(letter.id, letter.value, letter.origin) for letter in new] == [
        (f"{dlq}/0/5", b'{"item_id":"i5"}', f"{source}/0/11")
    ]
    assert tail.read_new() == [] and tail.ends == {0: 6}


def test_a_missing_target_topic_or_dead_letter_topic_is_one_line(topics, capsys):
    _, _, _, dlq = topics
    assert main(["dlq", "redrive", "--topic", dlq, "--all", "--to", "no-such-topic-here"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-topic-here" in err[0] and "do not exist" in err[0]
    assert main(["dlq", "summary", "--topic", "no-such-dlq-here"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'no-such-dlq-here' is not available" in err[0]


def test_a_second_redrive_fences_the_first_so_two_at_once_send_each_letter_once(topics, capsys):
    """The first redriver read the ledger and planned; a second redrive of the topic starts and sends. The
    first one, fenced by the second's transactional producer, can no longer commit: nothing is sent twice."""
    settings, source, _, dlq = topics
    first = Redriver(settings.connection(), dlq, 30)
    planned = plan(read_letters(settings.connection(), dlq, 30), Selection(reason="unknown item"), first.redriven())
    assert len(planned.send) == 2
    assert main(["dlq", "redrive", "--topic", dlq, "--reason", "unknown item"]) == 0
    assert "redrove 2 dead letters" in capsys.readouterr().out
    with pytest.raises(RedriveFenced, match="another redrive of"):
        first.send(planned.send)
    assert len(_bodies(settings, source)) == 2


def test_options_that_cannot_run_together_are_refused_in_one_line(topics, capsys):
    _, _, _, dlq = topics
    for options in (["--every", "5", "--again"], ["--every", "5", "--dry-run"], ["--stop-after", "5"]):
        assert main(["dlq", "redrive", "--topic", dlq, "--all", *options]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sluice dlq redrive: "), err
