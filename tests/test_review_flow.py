"""The review chain flow against the real broker: chains by policy, every verdict rule, hot-reloaded
policies, no raw card id in any output, a hash-chained audit trail that verifies, a kill -9 mid-chain
that loses no case, decides none twice and still fires the SLA timers due while it was down, and the
fraud flow's flagged decisions becoming cases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime

import orjson
import pytest

from models.review_case import Verdict
from models.review_policy import DEFAULT_POLICY
from operators.kafka.admin import read_all
from operators.kafka.records import header_value
from sluice.audit import verify_topic
from sluice.cli import main
from tests.helpers import produce, produce_txns, start_flow, txn
from tests.review_support import (
    REVIEW_FLOW,
    bodies,
    decision,
    eventually,
    finals,
    latest_cases,
    opened_cases,
    policy_active,
    publish_policy,
    review_settings,
    start_review_flow,
    verdict,
)

CARDS = {"A": "4000000000000001", "B": "4000000000000002", "C": "4000000000000003", "D": "4000000000000004"}

SLA_S = 8  # the SLA test's step deadline: room to open a case and kill the flow before it on a loaded box


def _by_verdict(settings, topic):
    return {b["verdict_id"]: b for b in bodies(settings, topic)}


def _activations(settings):
    return [a["policy_version"] for a in bodies(settings, settings.audit_topic) if a["what"] == "policy_activated"]


def _at_least(found, count):
    return found if len(found) >= count else None


def test_chains_verdict_rules_policy_reload_no_pii_and_a_verifiable_audit(stack, tmp_path):
    settings = review_settings(stack)
    conn = settings.connection()
    produce(
        settings,
        [
            decision("e-hist", CARDS["A"], "approve", 20.0),
            decision("e-small", CARDS["A"], "review", 120.0),
            decision("e-large", CARDS["B"], "review", 2_500.0),
            decision("e-huge", CARDS["C"], "review", 25_000.0),
            decision("e-decline-big", CARDS["D"], "decline", 800.0),
            decision("e-decline-small", CARDS["D"], "decline", 100.0),
            (b"x", b'{"decision": "review", "event_id": "broken"'),
        ],
        topic=settings.decisions_topic,
    )
    flow = start_review_flow(settings, tmp_path)
    try:
        cases = opened_cases(settings, 4)
        assert set(cases) == {"e-small", "e-large", "e-huge", "e-decline-big"}  # no case for approvals, small declines
        assert {e: c["chain"]["name"] for e, c in cases.items()} == {
            "e-small": "one-analyst",
            "e-large": "analyst-then-senior",
            "e-huge": "two-seniors",
            "e-decline-big": "one-analyst",
        }
        small, large, huge, big = (cases[e]["case_id"] for e in ("e-small", "e-large", "e-huge", "e-decline-big"))
        assert cases["e-small"]["transaction"]["card_masked"] == "••••0001"
        assert [p["decision"] for p in cases["e-small"]["card_history"]] == ["approve"]  # the card's earlier decision

        # a new policy version applies to cases opened from now on; a second content under that version is refused
        v2 = {
            **DEFAULT_POLICY,
            "version": "v2",
            "chains": [{"name": "one-senior", "steps": [{"role": "senior", "sla_s": 600}]}],
        }
        publish_policy(settings, v2)
        publish_policy(settings, {**v2, "default_action": "decline"})
        policy_active(settings, "v2")
        produce(settings, [decision("e-after-v2", CARDS["A"], "review", 50.0)], topic=settings.decisions_topic)
        after = opened_cases(settings, 5)["e-after-v2"]
        assert (after["chain"]["name"], after["chain"]["policy_version"]) == ("one-senior", "v2")
        publish_policy(settings, DEFAULT_POLICY)  # back to the start policy: an earlier version can return
        eventually(lambda: _activations(settings) == ["v2", "default-1"], what="default-1 active again")
        produce(settings, [decision("e-back", CARDS["A"], "review", 50.0)], topic=settings.decisions_topic)
        back = opened_cases(settings, 6)["e-back"]
        assert (back["chain"]["name"], back["chain"]["policy_version"]) == ("one-analyst", "default-1")

        sent = [
            verdict(small, 0, "ann", "analyst", note="spoke to the holder on 4000 0000 0000 0001"),
            verdict(large, 0, "bob", "analyst"),
            verdict(large, 1, "bob", "senior"),  # four-eyes: bob filled step 1
            verdict(large, 1, "carl", "analyst"),  # too junior for a senior step
            verdict(large, 0, "sue", "senior"),  # step 1 is already filled
            verdict(large, 1, "sue", "intern"),  # not a role of the chain
            verdict(large, 1, "sue", "senior"),
            verdict(huge, 0, "sue", "senior"),
            verdict(huge, 1, "sue", "senior", "decline"),  # four-eyes holds for "two seniors" too
            verdict(huge, 1, "tom", "senior", "decline", note="not the holder"),
            verdict(big, 0, "ann", "analyst", "request_info", note="asked for the invoice"),
            verdict(big, 0, "ann", "analyst", "decline", note="no invoice"),
            verdict("case-unknown", 0, "ann", "analyst"),
            (b"x", b'{"verdict_id": "v-bad", "case_id": "c"}'),
        ]
        produce(settings, sent, topic=settings.verdicts_topic)
        resent = sent[1]  # the same verdict again (same id)
        late = verdict(small, 0, "zed", "analyst")
        eventually(lambda: len(finals(settings)) >= 4, what="four final decisions")
        produce(settings, [resent, late], topic=settings.verdicts_topic)
        ids = [orjson.loads(v)["verdict_id"] for _, v in [*sent[:-1], late]]
        rejected = eventually(lambda: _at_least(_by_verdict(settings, settings.rejections_topic), 8), what="rejections")
        time.sleep(2.5)  # anything decided twice would show up now
        got = finals(settings)
    finally:
        flow.stop()

    codes = {vid: r["code"] for vid, r in rejected.items()}
    assert [codes.get(ids[i]) for i in (2, 3, 4, 5, 8, 12, 13)] == [
        "four_eyes",
        "role_too_junior",
        "wrong_step",
        "unknown_role",
        "four_eyes",
        "unknown_case",
        "case_closed",
    ]
    assert len(rejected) == 8 and list(codes.values()).count("duplicate") == 1
    assert "the same person cannot fill two steps" in rejected[ids[2]]["reason"]

    assert {c: len(v) for c, v in got.items()} == dict.fromkeys([small, large, huge, big], 1)  # each decided once
    outcome = {c: (v[0]["decision"], v[0]["by"]) for c, v in got.items()}
    assert outcome == {
        small: ("approve", "chain"),
        large: ("approve", "chain"),
        huge: ("decline", "chain"),
        big: ("decline", "chain"),
    }
    assert [(s["reviewer"], s["status"]) for s in got[large][0]["steps"]] == [("bob", "approved"), ("sue", "approved")]
    assert [h["effect"] for h in got[big][0]["history"]] == ["info_requested", "declined"]
    assert got[small][0]["steps"][0]["note"] == "spoke to the holder on [number removed]"

    dead = read_all(conn, settings.dlq_topic)
    reasons = sorted((header_value(m.headers(), "dlq.reason") or b"").decode() for m in dead)
    assert len(reasons) == 3 and any("already taken by other content" in r for r in reasons), reasons

    audit = bodies(settings, settings.audit_topic)
    what = Counter(a["what"] for a in audit)
    assert what["case_opened"] == 6 and what["final_decision"] == 4 and what["verdict_rejected"] == 8
    assert what["verdict_accepted"] == 7 and what["policy_activated"] == 2 and what["policy_rejected"] == 1
    opened = next(a for a in audit if a["what"] == "case_opened" and a["case_id"] == large)
    assert opened["model_version"] == "fraud-test-1" and opened["policy_version"] == "default-1"
    assert len(opened["input_hash"]) == 64 and opened["card_token"].startswith("tok_")
    checks = verify_topic(conn, settings.audit_topic)  # every partition's chain intact, and it holds every entry
    assert [c.broken for c in checks] == [None] * len(checks) and sum(c.records for c in checks) == len(audit)

    everything = b"".join(
        m.value() or b""
        for t in (settings.cases_topic, settings.final_decisions_topic, settings.audit_topic, settings.rejections_topic)
        for m in read_all(conn, t)
    )
    assert not any(card.encode() in everything for card in CARDS.values())  # no raw card number anywhere
    assert b"4000 0000 0000 0001" not in everything
    assert (tmp_path / "flow-0.log").read_text().count("4000000000000") == 0  # nor in the logs


def test_kill_9_mid_chain_loses_no_case_decides_none_twice_and_fires_timers_due_while_down(stack, tmp_path):
    settings = review_settings(stack)
    policy = {
        "version": "sla-test",
        "roles": ["analyst", "senior"],
        "default_action": "hold",
        "chains": [
            {
                "name": "long",
                "when": {"min_amount": 1000},
                "steps": [{"role": "analyst", "sla_s": 600}, {"role": "senior", "sla_s": 600}],
            },
            {"name": "short", "steps": [{"role": "analyst", "sla_s": SLA_S}], "default_action": "decline"},
        ],
    }
    publish_policy(settings, policy)
    produce(settings, [decision("e-two-steps", CARDS["A"], "review", 2_000.0)], topic=settings.decisions_topic)
    recovery = tmp_path / "recovery"
    flow = start_review_flow(settings, tmp_path / "life-1", recovery)
    try:
        chain_case = opened_cases(settings, 1)["e-two-steps"]["case_id"]
        policy_active(settings, "sla-test")
        produce(settings, [verdict(chain_case, 0, "ann", "analyst")], topic=settings.verdicts_topic)
        eventually(lambda: latest_cases(settings)[chain_case]["current_step"] == 1, what="step 1 approved")
        # a case whose SLA (SLA_S, then SLA_S more at senior, then the default) runs out while the flow is down
        produce(settings, [decision("e-sla", CARDS["B"], "review", 80.0)], topic=settings.decisions_topic)
        sla_case = opened_cases(settings, 2)["e-sla"]
        flow.kill()  # SIGKILL, mid-chain
    finally:
        flow.kill()
    killed_at_ms = time.time() * 1000.0
    last_deadline_ms = sla_case["opened_at"] + 2 * SLA_S * 1000
    if killed_at_ms >= sla_case["opened_at"] + SLA_S * 1000:  # the live flow may have escalated: not a replay
        pytest.skip("the box was too slow to kill the flow before the first SLA deadline; nothing to prove")
    produce(settings, [verdict(chain_case, 1, "sue", "senior")], topic=settings.verdicts_topic)  # waits in Kafka
    time.sleep(max(0.0, (last_deadline_ms - time.time() * 1000.0) / 1000.0) + 0.5)  # every deadline passes while down
    assert sla_case["case_id"] not in finals(settings)

    again = start_review_flow(settings, tmp_path / "life-2", recovery)
    try:
        eventually(lambda: len(finals(settings)) >= 2, what="both cases decided after the restart")
        time.sleep(2.5)  # a second decision of either case would show up now
        got = finals(settings)
        cases = bodies(settings, settings.cases_topic)
    finally:
        again.stop()
    assert {c: len(v) for c, v in got.items()} == {chain_case: 1, sla_case["case_id"]: 1}
    assert (got[chain_case][0]["decision"], got[chain_case][0]["by"]) == ("approve", "chain")
    timed_out = got[sla_case["case_id"]][0]
    assert (timed_out["decision"], timed_out["by"], timed_out["flags"]) == ("decline", "sla_default", ["sla_expired"])
    escalation = [h for h in timed_out["history"] if h["kind"] == "escalation"]
    assert [(h["from_role"], h["to_role"], h["at"]) for h in escalation] == [
        ("analyst", "senior", sla_case["opened_at"] + SLA_S * 1000)  # recorded at its deadline, not at the restart
    ]
    assert timed_out["decided_at"] == last_deadline_ms
    opened = Counter(b["case_id"] for b in cases if b["event"] == "opened")
    assert set(opened.values()) == {1}  # no case opened twice by the replay
    checks = verify_topic(settings.connection(), settings.audit_topic)
    audit = bodies(settings, settings.audit_topic)
    assert [c.broken for c in checks] == [None] * len(checks) and sum(c.records for c in checks) == len(audit) > 0


def test_the_fraud_flows_flagged_decisions_become_cases(settings, stack, tmp_path):
    """Transactions -> the fraud flow -> its decisions (with amount, country, category) -> cases."""
    from state.feature_store import FeatureStore

    review = replace(review_settings(stack), decisions_topic=settings.decisions_topic, review_decline_above=100.0)
    FeatureStore(settings.redis_url, "card").put_many(
        {"fr-home": {"home_country": "FR", "avg_amount": 60, "account_age_days": 900, "risk_tier": 0}}
    )
    fraud = start_flow(settings, tmp_path / "fraud")
    flow = start_review_flow(review, tmp_path / "review")
    try:
        produce_txns(
            settings,
            [
                txn("ok-1", "fr-home", 35.0, t_s=43_200, country="FR"),
                txn("abroad-1", "fr-home", 240.0, t_s=43_260, country="NG"),
            ],
        )
        case = opened_cases(review, 1)["abroad-1"]
        decisions = {
            d["event_id"]: d
            for d in (
                orjson.loads(m.value() or b"{}") for m in read_all(settings.connection(), settings.decisions_topic)
            )
        }
    finally:
        flow.stop()
        fraud.stop()
    assert decisions["abroad-1"]["decision"] in ("review", "decline") and decisions["ok-1"]["decision"] == "approve"
    t = case["transaction"]
    assert (t["amount"], t["country"], t["merchant_category"], t["card_masked"]) == (240.0, "NG", "grocery", "••••home")
    assert case["chain"]["name"] == "analyst-then-senior"  # a high-risk country
    assert [p["decision"] for p in case["card_history"]] == ["approve"]
    assert "high_risk_country" in case["automated"]["rules"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"SLUICE_REVIEW_PRODUCTION": "1", "SLUICE_REVIEW_TOKEN_KEY": ""},
            "SLUICE_REVIEW_TOKEN_KEY must hold at least",
        ),
        ({"SLUICE_REVIEW_POLICY_FILE": "{policy}"}, "chains[0].steps[0].role 'boss' is not one of the policy's roles"),
    ],
    ids=["no-token-key-in-production", "bad-policy-file"],
)
def test_misconfiguration_stops_the_flow_with_one_line(stack, tmp_path, env, expected):
    settings = review_settings(stack)
    bad = tmp_path / "policy.json"
    bad.write_text(json.dumps({**DEFAULT_POLICY, "chains": [{"name": "x", "steps": [{"role": "boss", "sla_s": 5}]}]}))
    done = subprocess.run(
        [sys.executable, "-m", "bytewax.run", REVIEW_FLOW],
        env={**os.environ, **settings.to_env(), **{k: v.replace("{policy}", str(bad)) for k, v in env.items()}},
        capture_output=True,
        text=True,
        timeout=120,
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("sluice: error:")]
    assert done.returncode == 2 and len(errors) == 1 and expected in errors[0], done.stderr[-2000:]


def test_secrets_are_never_printed_by_sluice_settings(monkeypatch, capsys):
    monkeypatch.setenv("SLUICE_REVIEW_TOKEN_KEY", "k" * 40)
    monkeypatch.setenv("SLUICE_REVIEW_SESSION_SECRET", "s" * 40)
    monkeypatch.setenv("SLUICE_KAFKA_SASL_PASSWORD", "p" * 12)  # a Kafka option passed through
    monkeypatch.setenv("SLUICE_REDIS_URL", "redis://app:" + "r" * 12 + "@127.0.0.1:6379/0")
    assert main(["settings", "review"]) == 0
    out = capsys.readouterr().out
    assert "SLUICE_REVIEW_TOKEN_KEY=(set)" in out and "SLUICE_REVIEW_SESSION_SECRET=(set)" in out
    assert "SLUICE_KAFKA_SASL_PASSWORD=(set)" in out and "SLUICE_REDIS_URL=redis://app:***@127.0.0.1:6379/0" in out
    assert not any(c * 12 in out for c in "ksp") and "r" * 12 not in out


def test_a_verdict_given_within_its_sla_counts_however_late_the_flow_reads_it():
    """A one-step chain with a 15-minute SLA (then decline). An approval given at minute 10 reaches a flow
    that is behind (a backlog, a restart) at minute 20: it was on time, so the case closes as approved, as
    a flow that kept up would have decided; the SLA applies only to what came after it."""
    from dataflows.review import CaseMachine, CaseRequest, OpenCase, Topics, VerdictIn
    from models.review_case import Chain, StepSpec, open_case
    from models.review_policy import CaseFacts
    from models.review_wire import Automated, CaseFile
    from operators.kafka.records import Position

    minute, t0 = 60_000.0, 1_767_225_600_000.0
    chain = Chain("c", "v1", ("analyst",), (StepSpec("analyst", 15 * 60.0),), "decline")  # no one to escalate to
    automated = Automated("review", 0.7, (), "m", (), (), t0)
    file = CaseFile("case-1", "e1", "tok_x", "••••0001", 10.0, "US", "grocery", 0, automated, (), "h")
    opened = OpenCase(
        CaseRequest(file, CaseFacts(10.0, "US", "review", ()), Position("d", 0, 1)), open_case("case-1", chain, t0)
    )

    def outcome(verdict_at_min: float, read_at_min: float) -> tuple[str, str]:
        machine = CaseMachine.build(Topics("cases", "rejections", "final", "audit", "dlq"), 3600.0, None)
        machine.on_items([opened], datetime.fromtimestamp(t0 / 1000, tz=UTC))
        verdict = Verdict("v1", "case-1", 0, "ann", "analyst", "approve", "ok", t0 + verdict_at_min * minute)
        machine.on_items([VerdictIn(verdict, Position("v", 0, 1), "h")],
                         datetime.fromtimestamp((t0 + read_at_min * minute) / 1000, tz=UTC))  # fmt: skip
        assert machine.memory is not None and machine.memory.case.outcome is not None
        return machine.memory.case.outcome.decision, machine.memory.case.outcome.by

    assert outcome(10, 11) == ("approve", "chain")
    assert outcome(10, 20) == ("approve", "chain")  # read late, given on time
    assert outcome(16, 20) == ("decline", "sla_default")  # given after the SLA: the default stands
