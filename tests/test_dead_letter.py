import hashlib
from dataclasses import astuple, replace

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.errors import BytewaxRuntimeError
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from models.transaction import checked_transaction, parse_transaction
from models.wire import InvalidEvent
from operators.dead_letter import DECIDED_HEADER, REFERENCE_HEADER, DeadLetter, parse_or_dead_letter
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
        (GOOD.replace(b'"amount":12.5', b'"amount":true'), "'amount' must be a number"),  # not a payment of 1
        (GOOD.replace(b'"currency":"USD"', b'"currency":"US"'), "currency must be 3 letters"),
        (GOOD.replace(b'"card_id":"c1",', b""), "'card_id' must be a non-empty string"),
        (GOOD.replace(b'"currency":"USD"', b'"currency":"DOLLARS"'), "'currency' is longer"),
        (GOOD.replace(b'"event_time":', b'"event_time":1'), "outside 2000..2100"),
        (None, "empty message value"),
    ],
)
def test_parser_names_the_problem(raw, reason):
    with pytest.raises(InvalidEvent, match=reason):
        parse_transaction(raw)


def test_the_smallest_amount_is_accepted_and_a_merchant_name_travels_with_the_event():
    assert parse_transaction(GOOD.replace(b'"amount":12.5', b'"amount":0.01')).amount == 0.01
    named = replace(txn("e1", "c1", 12.5, t_s=0), merchant_name="ACME <b>Store</b>")
    assert parse_transaction(named.to_json(sent_at_ms=1.0)) == replace(named, sent_at_ms=1.0)


# each field: a valid value, or something near a boundary or of the wrong type (bools, str vs number, nan)
_ODD: st.SearchStrategy[object] = st.sampled_from([None, True, 0, -1, 1.5, float("nan"), "", "x" * 65, [], {}])
_TEXT = st.one_of(st.text(min_size=0, max_size=70), _ODD)
_FIELDS = {
    "event_id": st.one_of(st.text(min_size=0, max_size=130), _ODD),
    "card_id": _TEXT,
    "amount": st.one_of(st.floats(allow_nan=True), st.integers(-10, 2_000_000), _ODD),
    "currency": st.one_of(st.text(min_size=2, max_size=4), _ODD),
    "merchant_id": _TEXT,
    "merchant_category": _TEXT,
    "country": st.one_of(st.text(min_size=1, max_size=3), _ODD),
    "event_time": st.one_of(st.integers(900_000_000_000, 4_200_000_000_000), st.floats(1e12, 2e12), _ODD),
    "sent_at": st.one_of(st.floats(allow_nan=True), st.integers(-5, 5_000_000_000_000), _ODD),
    "merchant_name": st.one_of(st.text(min_size=0, max_size=130), _ODD),
}


_VALID = orjson.loads(GOOD)


@st.composite
def _near_valid(draw: st.DrawFn) -> dict:
    """A valid transaction with up to two fields replaced by odd values or removed (so that both the accepting
    and the refusing side are exercised; fully random dicts are almost never valid)."""
    obj = dict(_VALID)
    for name in draw(st.lists(st.sampled_from(sorted(_FIELDS)), max_size=2, unique=True)):
        if draw(st.booleans()) and name in obj:
            del obj[name]
        else:
            obj[name] = draw(_FIELDS[name])
    return obj


@settings(max_examples=500, deadline=None)
@given(st.one_of(_near_valid(), st.fixed_dictionaries({}, optional=_FIELDS)))
def test_the_fast_parse_accepts_and_refuses_exactly_what_the_field_checks_do(obj):
    try:
        raw = orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return  # not representable as JSON (e.g. a lone surrogate): no record can carry it
    decoded = orjson.loads(raw)  # what the parser sees (orjson writes nan as null)
    try:
        expected = checked_transaction(decoded)
    except InvalidEvent as exc:
        with pytest.raises(InvalidEvent) as refused:
            parse_transaction(raw)
        assert str(refused.value) == str(exc)
    else:  # the same values of the same types (== alone would take an int amount for its float)
        got = parse_transaction(raw)
        assert [(type(v), v) for v in astuple(got)] == [(type(v), v) for v in astuple(expected)]


def _parse_with(parser, values: list[bytes | None]) -> tuple[list, list]:
    """``parse_or_dead_letter`` over records of ``values`` (offsets 0, 1, ...): what parsed, what was dead-lettered."""
    recs = [SourceRecord("tx", 0, i, b"k", v) for i, v in enumerate(values)]
    flow = Dataflow("dlq-parser")
    parsed = parse_or_dead_letter("parse", op.input("in", flow, TestingSource(recs)), parser)
    ok: list = []
    dead: list = []
    op.output("ok", parsed.ok, TestingSink(ok))
    op.output("dead", parsed.dead, TestingSink(dead))
    run_main(flow)
    return ok, dead


def test_bad_records_go_to_dead_letters_and_the_rest_flow_on():
    ok, dead = _parse_with(parse_transaction, [GOOD, b"{broken", GOOD, None])
    assert [r.offset for r, _ in ok] == [0, 2]
    assert [(d.source.offset, d.source.value) for d in dead] == [(1, b"{broken"), (3, None)]
    record = dead[0].to_record("dead-letters")
    headers = dict(record.headers)
    assert record.value == b"{broken"
    assert headers["dlq.reason"].startswith(b"not valid JSON")
    assert (headers["source.topic"], headers["source.partition"], headers["source.offset"]) == (b"tx", b"0", b"1")


def test_a_parser_bug_fails_the_flow_and_a_reason_is_never_empty():
    def buggy(raw: bytes | None) -> dict:
        empty: dict[str, dict] = {}
        return empty["missing"]  # a KeyError: a bug in the parser, not bad input

    with pytest.raises(BytewaxRuntimeError, match="dlq-parser.parse.parse") as info:  # not dead-lettered quietly
        _parse_with(buggy, [b"{}"])
    causes: list[type[BaseException]] = []
    exc: BaseException | None = info.value
    while exc is not None:
        causes.append(type(exc))
        exc = exc.__cause__ or exc.__context__
    assert KeyError in causes

    def terse(raw: bytes | None) -> dict:
        raise InvalidEvent("")

    _, dead = _parse_with(terse, [b"{}"])
    assert [d.reason for d in dead] == ["InvalidEvent"]  # something a summary and --reason can select


def test_a_reference_letter_names_the_whole_value_and_flags_travel_in_headers():
    value = b'{"pad": "' + b"x" * 5000 + b'"}'
    src = SourceRecord("tx", 1, 7, b"k", value)
    ref = DeadLetter("too odd", "parse", src, decided=True).to_record("dlq", max_bytes=len(value) - 1)
    body, headers = orjson.loads(ref.value or b"{}"), dict(ref.headers)
    assert body["sha256"] == hashlib.sha256(value).hexdigest() and body["size"] == len(value)
    assert headers[REFERENCE_HEADER] == b"1" and headers[DECIDED_HEADER] == b"1"
    whole = DeadLetter("too odd", "parse", src).to_record("dlq", max_bytes=len(value))  # at the limit: kept
    assert whole.value == value and REFERENCE_HEADER not in dict(whole.headers)
    assert DECIDED_HEADER not in dict(whole.headers)
