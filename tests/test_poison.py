"""No record's content and no profile value may crash the fraud path: parse -> window -> profile -> score.

Hypothesis throws arbitrary bytes, arbitrary JSON objects shaped like transactions, and arbitrary
profile hashes at exactly the functions the flow runs. Bad input must come out as InvalidEvent (a
dead letter) or as a flagged decision, never as an exception, a NaN score or an unserialisable record.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dataflows.fraud import (
    CardEvent,
    EnrichedEvent,
    _enriched,
    cascade_batch,
    decision_records,
    needs_note,
    note_records,
    pending_note,
)
from models.fraud_feature_log import parse_feature_log
from models.fraud_features import parse_profile
from models.fraud_model import FraudCascade, load_cascade
from models.fraud_policy import Policy
from models.transaction import parse_transaction
from models.wire import InvalidEvent, four_decimals
from operators.event_windows import Windowed, WindowStatus
from operators.kafka.records import SourceRecord
from sluice.settings import FraudSettings
from state.feature_store import Unreadable, decode_reply
from state.windows import SlidingAggregates, WindowSpec

numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([5e-324, 1e-300, 0.0, -0.0, 0.009, 0.01, 1e6, 1e6 + 1, 1.7976931348623157e308]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=80), st.lists(st.integers(-9, 9), max_size=3))
FIELDS = ["event_id", "card_id", "amount", "currency", "merchant_id", "merchant_category", "country", "event_time"]
transaction_like = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.one_of(st.text(min_size=1, max_size=200), scalars),
        "card_id": st.one_of(st.sampled_from(["c1", "c2"]), scalars),
        "amount": st.one_of(numbers, scalars),
        "currency": st.one_of(st.sampled_from(["USD", "EUR"]), scalars),
        "merchant_id": st.one_of(st.sampled_from(["m1", "m2"]), scalars),
        "merchant_category": st.one_of(st.sampled_from(["grocery", "crypto"]), scalars),
        "country": st.one_of(st.sampled_from(["US", "NG", "ZZ"]), scalars),
        "event_time": st.one_of(st.integers(min_value=946_684_800_000, max_value=4_102_444_800_000), scalars),
        "sent_at": st.one_of(numbers, scalars),
    },
)
VALID: dict[str, Any] = {
    "event_id": "e1",
    "card_id": "c1",
    "amount": 12.5,
    "currency": "USD",
    "merchant_id": "m1",
    "merchant_category": "crypto",
    "country": "US",
    "event_time": 1_767_225_600_000,
    "sent_at": 0,
}
nearly_valid = st.tuples(
    st.dictionaries(st.sampled_from(sorted(VALID)), st.one_of(numbers, scalars), max_size=2),
    st.integers(min_value=0, max_value=10**9),
).map(
    lambda patch: orjson.dumps(
        {**VALID, "event_id": f"e{patch[1]}", "event_time": VALID["event_time"] + patch[1], **patch[0]}
    )
)
raw_values = st.one_of(
    st.binary(max_size=300),
    transaction_like.map(lambda d: orjson.dumps(d)),
    nearly_valid,
    nearly_valid,
    st.sampled_from([b"", b"null", b"[]", b'"\\ud800"', b'{"amount": 1e400}', b"{" * 1000]),
)
profile_values = st.one_of(
    st.sampled_from([b"", b"inf", b"-inf", b"nan", b"-1", b"1e400", b"\xff\xfe", b"12.5", b"0", b"1e-320", b"lots"]),
    st.binary(max_size=12),
    st.text(max_size=12).map(str.encode),
)
profile_replies = st.one_of(
    st.none(),
    st.just(Exception("WRONGTYPE Operation against a key holding the wrong kind of value")),
    st.dictionaries(
        st.sampled_from([b"avg_amount", b"account_age_days", b"risk_tier", b"home_country", b"\xff"]),
        profile_values,
        max_size=5,
    ),
)


@pytest.fixture(scope="module")
def fraud_settings(model_dir) -> FraudSettings:  # type: ignore[no-untyped-def]
    return replace(FraudSettings(), model_path=str(model_dir), device="cpu")


@pytest.fixture(scope="module")
def cascade(model_dir) -> FraudCascade:  # type: ignore[no-untyped-def]
    return load_cascade(model_dir / (model_dir / "LATEST").read_text().strip(), device="cpu")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(raw_values, profile_replies, st.booleans()), min_size=1, max_size=12))
def test_nothing_in_a_record_or_a_profile_makes_the_path_raise(fraud_settings, cascade, cases):
    window = SlidingAggregates(WindowSpec())
    items: list[EnrichedEvent] = []
    for offset, (raw, reply, store_down) in enumerate(cases):
        try:
            txn = parse_transaction(raw)
        except InvalidEvent:
            continue  # becomes a dead letter with its reason
        extra = (txn.merchant_category, txn.country)
        feats = window.add(txn.event_time_s, txn.amount, txn.merchant_id, txn.event_id, extra)
        status, recent = WindowStatus.OK, window.recent_events(txn.event_time_s, 32)
        if feats is None:
            feats, status = window.peek(txn.event_time_s, txn.amount, txn.merchant_id), WindowStatus.LATE
            recent = window.recent_events_with(txn.event_time_s, txn.amount, extra, 32)
        # the flow's own enrichment: a store that is down returns nothing for the card (cached ones still serve)
        lookup = None if store_down else decode_reply(reply, parse_profile)
        windowed = Windowed(CardEvent(SourceRecord("tx", 0, offset, b"k", raw), txn), feats, status, recent)
        items.append(_enriched((txn.card_id, windowed), lookup, store_down))
    scored = cascade_batch(cascade, cascade.version, items, Policy()) if items else []
    records = [r for r in decision_records(scored, fraud_settings) if r.topic == fraud_settings.decisions_topic]
    assert len(records) == len(items)
    for record in records:
        decision: dict[str, Any] = orjson.loads(record.value or b"")
        assert decision["decision"] in {"approve", "review", "decline"}
        assert isinstance(decision["score"], float) and math.isfinite(decision["score"])
    logged = [
        parse_feature_log(r.value)
        for r in decision_records(scored, fraud_settings)
        if r.topic != fraud_settings.decisions_topic
    ]
    assert [x.event_id for x in logged] == [s.item.event.txn.event_id for s in scored]
    cases = [pending_note(s, Policy()) for s in scored if needs_note(s, fraud_settings)]
    for note in note_records(cases, fraud_settings, use_llm=False):
        body = orjson.loads(note.value or b"")
        assert body["rationale"] and body["source"] == "template"
        assert body["not_generated_because"].startswith("template notes")  # not "no time": nothing was tried


@given(st.floats(0.0, 1.0))
def test_a_score_is_written_as_round_writes_it_but_at_a_half(x: float):
    """Scores are rounded by ``four_decimals`` (a third of ``round(x, 4)``'s cost): the same value, except
    where ``x * 10000`` is within a rounding error of a half, and never more than half a step away."""
    got = four_decimals(x)
    assert abs(got - x) <= 0.5e-4 + 1e-12
    scaled = x * 10000.0
    if abs(scaled - math.floor(scaled) - 0.5) > 1e-6:
        assert got == round(x, 4)


@pytest.mark.parametrize("status", list(WindowStatus))
@pytest.mark.parametrize("down", [False, True])
@pytest.mark.parametrize("lookup", ["profile", "missing", "unreadable"])
def test_a_decision_is_flagged_with_what_it_was_made_without(status, down, lookup):
    """Every lookup the profile step can give, with the store up or down: a cached profile served while the
    store is down is no flag; the store's being down is flagged only for an event it left without one."""
    txn = parse_transaction(orjson.dumps(VALID))
    windowed = Windowed(CardEvent(SourceRecord("tx", 0, 1, b"k", b"{}"), txn), (1.0,) * 6, status)
    found = {"profile": parse_profile({"home_country": "FR"}), "missing": None, "unreadable": Unreadable("bad")}
    flags = _enriched((txn.card_id, windowed), found[lookup], down).flags()
    expected = {
        ("profile", False): [], ("profile", True): [],
        ("missing", False): ["profile_missing"], ("missing", True): ["feature_store_down"],
        ("unreadable", False): ["profile_invalid"], ("unreadable", True): ["profile_invalid"],
    }[lookup, down]  # fmt: skip
    assert flags == ([] if status is WindowStatus.OK else [f"event_{status.value}"]) + expected
