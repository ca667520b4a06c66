"""The pure cores of the review chain: the case state machine (property-tested: no sequence of verdicts
and clock ticks decides a case twice, lets one reviewer fill two steps or a junior fill a senior step),
policy validation and matching, the wire formats and the card tokens."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.card_token import CardTokenizer, mask, redact_numbers
from models.review_case import (
    ACTIONS,
    Accepted,
    Case,
    Chain,
    Closed,
    Escalated,
    Event,
    Rejected,
    StepSpec,
    Verdict,
    admissible,
    advance_time,
    apply_verdict,
    open_case,
)
from models.review_policy import DEFAULT_POLICY, CaseFacts, default_policy, parse_policy, policy_from_object
from models.review_wire import (
    Automated,
    CaseFile,
    case_body,
    case_from_body,
    parse_decision,
    parse_verdict,
)
from models.wire import InvalidEvent

ROLES = ("analyst", "senior", "head")
REVIEWERS = ("ann", "bob", "cat", "dan")

chains = st.builds(
    lambda steps, default: Chain("c", "v1", ROLES, tuple(steps), default),
    st.lists(st.builds(StepSpec, st.sampled_from(ROLES), st.integers(1, 100).map(float)), min_size=1, max_size=3),
    st.sampled_from(["hold", "decline"]),
)
verdict_ops = st.tuples(
    st.just("verdict"),
    st.integers(0, 3),  # step (some out of range, some stale, some early)
    st.sampled_from(REVIEWERS),
    st.sampled_from([*ROLES, "intern"]),
    st.sampled_from(ACTIONS),
    st.integers(0, 12),  # verdict id from a small pool: duplicates happen
)
tick_ops = st.tuples(st.just("tick"), st.integers(0, 150))
operations = st.lists(st.one_of(verdict_ops, tick_ops), max_size=40)


def run(chain: Chain, ops: list[tuple]) -> tuple[Case, list[tuple[tuple, list[Event]]]]:
    case = open_case("case-1", chain, opened_at_ms=0.0)
    now = 0.0
    trace = []
    for op in ops:
        if op[0] == "tick":
            now += op[1] * 1000.0
            case, events = advance_time(case, now)
        else:
            _, step, reviewer, role, action, vid = op
            case, events = apply_verdict(case, Verdict(f"v{vid}", "case-1", step, reviewer, role, action, "n", now))
        trace.append((op, events))
    return case, trace


@settings(max_examples=400, deadline=None)
@given(chains, operations)
def test_no_sequence_decides_twice_or_breaks_four_eyes_or_ranks(chain, ops):
    case, trace = run(chain, ops)
    events = [e for _, es in trace for e in es]
    closes = [e for e in events if isinstance(e, Closed)]
    assert len(closes) <= 1 and (case.outcome is not None) == bool(closes)
    closed_at = next((i for i, (_, es) in enumerate(trace) if any(isinstance(e, Closed) for e in es)), None)
    if closed_at is not None:
        for op, es in trace[closed_at + 1 :]:  # nothing changes a closed case
            assert all(isinstance(e, Rejected) for e in es), (op, es)
    for op, es in trace:
        if op[0] == "verdict":  # every verdict gets exactly one answer
            assert len([e for e in es if isinstance(e, Accepted | Rejected)]) == 1
    fillers = [s.verdict.reviewer for s in case.steps if s.verdict is not None]
    assert len(fillers) == len(set(fillers))  # four-eyes
    for s in case.steps:
        assert chain.rank(s.required) >= chain.rank(s.spec.role)  # escalation only raises
        assert s.escalations == chain.rank(s.required) - chain.rank(s.spec.role)
        if s.verdict is not None:
            assert chain.rank(s.verdict.role) >= chain.rank(s.required)  # nobody too junior filled a step
    if case.outcome is not None and case.outcome.by == "chain" and case.outcome.decision == "approve":
        assert all(s.verdict is not None and s.verdict.action == "approve" for s in case.steps)
    if case.outcome is not None and case.outcome.by == "sla_default":
        assert case.outcome.flags == ("sla_expired",) and case.outcome.decision == chain.default_action
        assert case.steps[case.current].required == ROLES[-1]  # escalated to the top before the default
    assert run(chain, ops) == (case, trace)  # pure: the same inputs give the same case


@settings(max_examples=150, deadline=None)
@given(chains, operations)
def test_a_case_snapshot_rebuilds_the_case_the_web_page_checks_against(chain, ops):
    case, _ = run(chain, ops)
    automated = Automated("review", 0.7, (), "m", (), (), 0.0)
    file = CaseFile("case-1", "e1", "tok_x", "••••0001", 10.0, "US", "grocery", 0, automated, (), "h")
    rebuilt = case_from_body(case_body(case, file, "test", 0.0))
    accepted = frozenset(e.verdict.verdict_id for e in case.history if isinstance(e, Accepted))
    assert rebuilt == Case(**{**{f: getattr(case, f) for f in case.__slots__}, "seen": accepted})


def test_escalation_climbs_one_rank_per_sla_then_the_default_applies():
    chain = Chain("c", "v1", ROLES, (StepSpec("analyst", 10),), "hold")
    case, events = advance_time(open_case("k", chain, 0.0), now_ms=35_000)
    assert [(e.from_role, e.to_role, e.at_ms) for e in events if isinstance(e, Escalated)] == [
        ("analyst", "senior", 10_000),
        ("senior", "head", 20_000),
    ]
    assert [e.outcome for e in events if isinstance(e, Closed)][0].at_ms == 30_000
    assert advance_time(case, 99_000) == (case, [])


def test_request_info_keeps_the_step_open_and_its_sla_running():
    chain = Chain("c", "v1", ROLES, (StepSpec("analyst", 10), StepSpec("senior", 10)), "hold")
    case, _ = apply_verdict(open_case("k", chain, 0.0), Verdict("v1", "k", 0, "ann", "analyst", "request_info", "?", 1))
    assert case.status == "info_requested" and case.current == 0 and case.steps[0].deadline_ms == 10_000
    again, events = apply_verdict(case, Verdict("v1", "k", 0, "ann", "analyst", "request_info", "?", 5))
    assert again == case and [(type(e).__name__, getattr(e, "code", None)) for e in events] == [
        ("Rejected", "duplicate")
    ]
    assert len(case.history) == 1  # a verdict sent twice counts once
    case, _ = apply_verdict(case, Verdict("v2", "k", 0, "ann", "analyst", "approve", "ok", 2_000))
    assert case.status == "open" and case.current == 1 and case.steps[1].deadline_ms == 12_000


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": ""}, "'version' must be a non-empty string"),
        ({"roles": ["analyst", "analyst"]}, "'roles' must list 1 to 10 distinct role names"),
        ({"default_action": "approve"}, "'default_action' must be one of hold, decline"),
        ({"chains": []}, "'chains' must be a non-empty list"),
        ({"colour": "red"}, "unknown key(s) colour"),
        ({"chains": [{"name": "x", "steps": [{"role": "boss", "sla_s": 5}]}]}, "chains[0].steps[0].role 'boss' is not"),
        ({"chains": [{"name": "x", "steps": [{"role": "analyst", "sla_s": 0}]}]}, "chains[0].steps[0].sla_s must be"),
        ({"chains": [{"name": "x", "steps": []}]}, "chains[0].steps must be a list of 1 to 10 steps"),
        (
            {"chains": [{"name": "x", "when": {"min_amout": 5}, "steps": [{"role": "analyst", "sla_s": 5}]}]},
            "chains[0].when has unknown condition(s) min_amout",
        ),
        (
            {"chains": [{"name": "x", "when": {"min_amount": 5}, "steps": [{"role": "analyst", "sla_s": 5}]}]},
            "chains[0] must have no 'when': the last chain is the catch-all",
        ),
        (
            {"chains": [{"name": "x", "steps": [{"role": "analyst", "sla_s": 5}]}] * 2},
            "chain names must be distinct",
        ),
        (
            {"chains": [{"name": "x", "when": {"decisions": ["approve"]}, "steps": [{"role": "analyst", "sla_s": 5}]},
                        {"name": "rest", "steps": [{"role": "analyst", "sla_s": 5}]}]},
            "chains[0].when.decisions may only hold review and decline",
        ),
        (
            {"chains": [{"name": "x", "steps": [{"role": "analyst", "sla_s": 5, "sla": 9}]}]},
            'chains[0].steps[0] must be an object {"role"',
        ),
    ],
)  # fmt: skip
def test_a_bad_policy_is_refused_naming_its_path(change, message):
    with pytest.raises(InvalidEvent) as info:
        policy_from_object({**DEFAULT_POLICY, **change})
    assert message in str(info.value)


@given(st.floats(0.01, 1e7), st.sampled_from(["US", "NG", "FR", "RU"]), st.sampled_from(["review", "decline"]))
def test_every_case_gets_the_first_chain_that_applies(amount, country, decision):
    chain = default_policy().chain_for(CaseFacts(amount, country, decision, ()))
    expected = (
        "two-seniors"
        if amount >= 10_000
        else "analyst-then-senior"
        if amount >= 1_000 or country in ("NG", "RU")
        else "one-analyst"
    )
    assert chain.name == expected and chain.policy_version == "default-1"


def test_amount_bands_end_below_their_bound_and_a_rule_condition_wants_any_of_its_rules():
    def chain(when: dict) -> str:
        policy = policy_from_object(
            {
                "version": "b",
                "roles": ["analyst"],
                "default_action": "hold",
                "chains": [
                    {
                        "name": "hit",
                        "when": when,
                        "default_action": "decline",
                        "steps": [{"role": "analyst", "sla_s": 5}],
                    },
                    {"name": "rest", "steps": [{"role": "analyst", "sla_s": 5}]},
                ],
            }  # fmt: skip
        )
        return policy.chain_for(facts).name + "/" + policy.chain_for(facts).default_action

    facts = CaseFacts(99.99, "US", "review", ("a",))
    assert chain({"below_amount": 100}) == "hit/decline"  # the chain's own default action, not the policy's
    facts = CaseFacts(100.0, "US", "review", ("a",))
    assert chain({"below_amount": 100}) == "rest/hold"
    assert chain({"rules": ["a", "b"]}) == "hit/decline"  # any of them fired
    assert chain({"rules": ["b"]}) == "rest/hold"


def test_the_same_policy_written_in_another_key_order_has_the_same_digest():
    """Republishing a policy whose keys an editor reordered is the same version, not a conflicting one."""
    reordered = {k: DEFAULT_POLICY[k] for k in reversed(list(DEFAULT_POLICY))}
    assert list(reordered) != list(DEFAULT_POLICY)
    assert policy_from_object(reordered).digest == default_policy().digest


def test_conditions_on_decisions_and_rules():
    policy = policy_from_object(
        {
            "version": "r",
            "roles": ["analyst", "senior"],
            "default_action": "hold",
            "chains": [
                {"name": "declines", "when": {"decisions": ["decline"]}, "steps": [{"role": "senior", "sla_s": 60}]},
                {"name": "bursts", "when": {"rules": ["velocity_burst"]}, "steps": [{"role": "analyst", "sla_s": 60}]},
                {"name": "rest", "steps": [{"role": "analyst", "sla_s": 120}]},
            ],
        }
    )
    assert policy.chain_for(CaseFacts(5, "US", "decline", ())).name == "declines"
    assert policy.chain_for(CaseFacts(5, "US", "review", ("velocity_burst",))).name == "bursts"
    assert policy.chain_for(CaseFacts(5, "US", "review", ("other",))).name == "rest"
    assert policy.chain_for(CaseFacts(5, "US", "decline", ())).default_action == "hold"  # the policy's own
    assert parse_policy(
        b'{"version": "r", "roles": ["a"], "default_action": "hold", "chains": '
        b'[{"name": "x", "steps": [{"role": "a", "sla_s": 1}]}]}'
    ).roles == ("a",)


def test_decisions_that_need_people_must_carry_what_a_chain_needs():
    with pytest.raises(InvalidEvent, match="field 'amount'"):
        parse_decision(
            b'{"event_id":"e","card_id":"c","decision":"review","score":0.5,"model_version":"m",'
            b'"event_time":1767225600000,"decided_at":1767225600000}'
        )
    approved = parse_decision(
        b'{"event_id":"e","card_id":"c","decision":"approve","score":0.1,"model_version":"m",'
        b'"event_time":1767225600000,"decided_at":1767225600000}'
    )
    assert approved is not None and approved.amount is None and not approved.needs_people(0.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"action": "maybe"}, "field 'action' must be one of"),
        ({"note": "   "}, "field 'note' is required"),
        ({"step": -1}, "field 'step'"),
        ({"reviewer": "ann smith"}, "may hold only letters"),
        ({"at": 5}, "field 'at'"),
    ],
)
def test_a_bad_verdict_is_refused_with_the_reason(change, message):
    good = {
        "verdict_id": "v",
        "case_id": "c",
        "step": 0,
        "reviewer": "ann",
        "role": "analyst",
        "action": "approve",
        "note": "ok",
        "at": 1767225600000,
    }
    with pytest.raises(InvalidEvent, match=message):
        parse_verdict(orjson.dumps({**good, **change}))


@given(st.text(alphabet="0123456789", min_size=12, max_size=19), st.binary(min_size=16, max_size=64))
def test_tokens_are_keyed_and_reveal_no_card_number(card, key):
    tok = CardTokenizer(key).token(card)
    assert card not in tok
    assert tok == CardTokenizer(key).token(card) and tok != CardTokenizer(key + b"!").token(card)
    assert mask(card).endswith(card[-4:]) and card not in mask(card)
    assert card not in redact_numbers(f"card {card} used twice")


def test_a_short_token_key_is_refused():
    with pytest.raises(ValueError, match="at least 16 bytes"):
        CardTokenizer(b"short")


def test_a_verdict_for_a_step_the_chain_does_not_have_says_so():
    chain = Chain("c", "v1", ROLES, (StepSpec("analyst", 10), StepSpec("senior", 10)), "hold")
    case = open_case("k", chain, 0.0)
    beyond = admissible(case, Verdict("v9", "k", 98, "ann", "analyst", "approve", "ok", 1))
    later = admissible(case, Verdict("v2", "k", 1, "ann", "analyst", "approve", "ok", 1))
    assert beyond is not None and beyond.reason == "step 99 is not a step of this chain: step 1 is the open one"
    assert later is not None and later.reason == "step 2 is not open yet: step 1 is the open one"
