import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from models.transaction import parse_transaction
from models.wire import InvalidEvent
from operators.dead_letter import parse_or_dead_letter
from operators.kafka.records import SourceRecord
from tests.helpers import txn

GOOD = txn("e1", "c1", 12.5, t_s=0).to_json(sent_at_ms=1.0)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (GOOD.replace(b'"amount":12.5', b'"amount":"12.5"'), "'amount' must be a number"),
        (GOOD.replace(b'"amount":12.5', b'"amount":-3'), "'amount' out of range"),
        (GOOD.replace(b'"card_id":"c1",', b""), "'card_id' must be a non-empty string"),
        (GOOD.replace(b'"currency":"USD"', b'"currency":"DOLLARS"'), "'currency' is longer"),
        (GOOD.replace(b'"event_time":', b'"event_time":1'), "outside 2000..2100"),
        (None, "empty message value"),
    ],
)
def test_parser_names_the_problem(raw, reason):
    with pytest.raises(InvalidEvent, match=reason):
        parse_transaction(raw)


def test_bad_records_go_to_dead_letters_and_the_rest_flow_on():
    recs = [SourceRecord("tx", 0, i, b"k", v) for i, v in enumerate([GOOD, b"{broken", GOOD, None])]
    flow = Dataflow("dlq")
    parsed = parse_or_dead_letter("parse", op.input("in", flow, TestingSource(recs)), parse_transaction)
    ok: list = []
    dead: list = []
    op.output("ok", parsed.ok, TestingSink(ok))
    op.output("dead", parsed.dead, TestingSink(dead))
    run_main(flow)
    assert [r.offset for r, _ in ok] == [0, 2]
    assert [(d.source.offset, d.source.value) for d in dead] == [(1, b"{broken"), (3, None)]
    record = dead[0].to_record("dead-letters")
    headers = dict(record.headers)
    assert record.value == b"{broken"
    assert headers["dlq.reason"].startswith(b"not valid JSON")
    assert (headers["source.topic"], headers["source.partition"], headers["source.offset"]) == (b"tx", b"0", b"1")
