"""Wire formats of the review chain: decisions in, verdicts in, cases, rejections, final decisions and audit out.

Inputs are validated here (a bad record becomes a dead letter with the reason);
outputs are built here as plain JSON objects, so their shape is fixed in one
place whatever the flow or the web page does with them. No output carries a raw
card id: cases, final decisions and audit records name the card by its keyed
token (:mod:`models.card_token`) and show people its masked form; reviewers'
notes lose long digit runs on the way in.

Schemas (``step`` counts from 0; times are epoch milliseconds):

* verdict (``review-verdicts``, key = case id): ``verdict_id, case_id, step,
  reviewer, role, action (approve | decline | request_info), note, at``
* case (``review-cases``, key = case id): a full snapshot after every change,
  ``event`` saying which (:func:`case_body`)
* rejection (``review-rejections``): ``verdict_id, case_id, step, reviewer, role,
  action, code, reason, at``
* final decision (``final-decisions``): the outcome and the whole chain (:func:`final_body`)
* audit (``audit``): ``what, who, when, why, case_id, event_id, card_token,
  model_version, policy_version, input_hash, details`` (:func:`audit_body`)
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from typing import Any

from models.card_token import CardTokenizer, mask, redact_numbers
from models.review_case import (
    ACTIONS,
    Accepted,
    Case,
    Chain,
    Entry,
    Escalated,
    Outcome,
    Rejected,
    Step,
    StepSpec,
    Verdict,
)
from models.review_policy import CaseFacts
from models.wire import InvalidEvent, json_object

MAX_NOTE_CHARS = 2000
MIN_TIME_MS = 946_684_800_000  # 2000-01-01
MAX_TIME_MS = 4_102_444_800_000  # 2100-01-01
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
FEATURE_NAMES = ("count_1m", "count_1h", "distinct_1h", "secs_since_prev")

Body = dict[str, Any]


def case_id_for(event_id: str) -> str:
    """A case's id: derived from the transaction's event id, so a repeated decision finds the same case.

    >>> case_id_for("7-0")
    'case-b110d889e34e617e2b2b'
    """
    return "case-" + hashlib.sha256(event_id.encode()).hexdigest()[:20]


def input_hash(raw: bytes | None) -> str:
    """SHA-256 of an input record's value: the audit trail names the exact bytes a step acted on."""
    return hashlib.sha256(raw or b"").hexdigest()


@dataclass(frozen=True, slots=True)
class PastTransaction:
    """One earlier decision on the same card, as a reviewer sees it."""

    amount: float | None
    merchant_category: str | None
    country: str | None
    decision: str
    event_time_ms: int


@dataclass(frozen=True, slots=True)
class Automated:
    """The fraud flow's decision, as a case shows it."""

    decision: str
    score: float
    rules: tuple[str, ...]
    model_version: str
    flags: tuple[str, ...]
    features: tuple[tuple[str, float], ...]
    decided_at_ms: float


@dataclass(frozen=True, slots=True)
class DecisionFacts:
    """What the review chain reads of a fraud decision: what a card's history keeps of every decision,
    and for a flagged one what its case shows (``automated``; approvals' scores and features are never
    shown, so they are not decoded: most of the stream). The card id never leaves the flow's state."""

    event_id: str
    card_id: str
    decision: str
    amount: float | None
    country: str | None
    merchant_category: str | None
    event_time_ms: int
    automated: Automated | None = None
    rationale: str | None = None

    def needs_people(self, decline_review_above: float) -> bool:
        """``review`` decisions, and declines of at least ``decline_review_above``."""
        if self.decision == "review":
            return True
        return self.decision == "decline" and self.amount is not None and self.amount >= decline_review_above

    def facts(self) -> CaseFacts:
        rules = self.automated.rules if self.automated is not None else ()
        return CaseFacts(self.amount or 0.0, self.country or "", self.decision, rules)

    def past(self) -> PastTransaction:
        return PastTransaction(self.amount, self.merchant_category, self.country, self.decision, self.event_time_ms)


def _str(obj: dict[str, Any], key: str, max_len: int = 128, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise InvalidEvent(f"field {key!r} must be a non-empty string of at most {max_len} characters")
    return value


def _num(obj: dict[str, Any], key: str, low: float, high: float, required: bool = True) -> float | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidEvent(f"field {key!r} must be a number in [{low:g}, {high:g}]")
    return float(value)


def _names(obj: dict[str, Any], key: str) -> tuple[str, ...]:
    value = obj.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and len(v) <= 64 for v in value) or len(value) > 32:
        raise InvalidEvent(f"field {key!r} must be a list of short strings")
    return tuple(value)


APPROVED_MARK = b'"decision":"approve"'


def parse_decision(raw: bytes | None, *, skip_approved: bool = False) -> DecisionFacts | None:
    """A fraud decision record (``dataflows.fraud``); None for approvals when ``skip_approved``
    (they are dropped before decoding: most of the stream, none of them a case).

    A decision that needs people must carry ``amount``, ``country`` and
    ``merchant_category`` (fraud flows before the review chain did not write them).

    >>> parse_decision(b'{"decision":"approve","event_id":"e"}', skip_approved=True) is None
    True
    """
    if skip_approved and raw is not None and APPROVED_MARK in raw:
        return None
    obj = json_object(raw)
    decision = _str(obj, "decision", 16)
    if decision not in ("approve", "review", "decline"):
        raise InvalidEvent("field 'decision' must be approve, review or decline")
    if skip_approved and decision == "approve":
        return None
    flagged = decision != "approve"
    facts = DecisionFacts(
        event_id=str(_str(obj, "event_id")),
        card_id=str(_str(obj, "card_id", 64)),
        decision=decision,
        amount=_num(obj, "amount", 0.0, 1e12, required=flagged),
        country=_str(obj, "country", 2, required=flagged),
        merchant_category=_str(obj, "merchant_category", 64, required=flagged),
        event_time_ms=int(_num(obj, "event_time", MIN_TIME_MS, MAX_TIME_MS) or 0),
    )
    if not flagged:
        return facts
    features = obj.get("features", {})
    if not isinstance(features, dict):
        raise InvalidEvent("field 'features' must be an object")
    feats = tuple((name, float(v)) for name in FEATURE_NAMES if isinstance(v := features.get(name), int | float))
    rationale = obj.get("rationale")
    automated = Automated(
        decision=decision,
        score=float(_num(obj, "score", 0.0, 1.0) or 0.0),
        rules=_names(obj, "rules"),
        model_version=str(_str(obj, "model_version")),
        flags=_names(obj, "flags"),
        features=feats,
        decided_at_ms=float(_num(obj, "decided_at", MIN_TIME_MS, MAX_TIME_MS) or 0.0),
    )
    return replace(
        facts, automated=automated, rationale=rationale[:4000] if isinstance(rationale, str) and rationale else None
    )


def parse_verdict(raw: bytes | None) -> Verdict:
    """A verdict record; the note loses long digit runs (:func:`models.card_token.redact_numbers`).

    >>> v = parse_verdict(b'{"verdict_id":"v1","case_id":"case-1","step":0,"reviewer":"ann","role":"analyst",'
    ...                   b'"action":"approve","note":"card 4111-1111-1111-1111 ok","at":1767225600000}')
    >>> v.note, v.step
    ('card [number removed] ok', 0)
    """
    obj = json_object(raw)
    ids = {k: _str(obj, k, 64) for k in ("verdict_id", "case_id", "reviewer", "role")}
    for key, value in ids.items():
        if not _ID.fullmatch(str(value)):
            raise InvalidEvent(f"field {key!r} may hold only letters, digits and _ . : -")
    step = obj.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step < 100:
        raise InvalidEvent("field 'step' must be a whole number from 0")
    action = obj.get("action")
    if action not in ACTIONS:
        raise InvalidEvent(f"field 'action' must be one of {', '.join(ACTIONS)}")
    note = obj.get("note")
    if not isinstance(note, str) or not note.strip() or len(note) > MAX_NOTE_CHARS:
        raise InvalidEvent(f"field 'note' is required: 1 to {MAX_NOTE_CHARS} characters")
    return Verdict(
        verdict_id=str(ids["verdict_id"]),
        case_id=str(ids["case_id"]),
        step=step,
        reviewer=str(ids["reviewer"]),
        role=str(ids["role"]),
        action=str(action),
        note=redact_numbers(note.strip()),
        at_ms=float(_num(obj, "at", MIN_TIME_MS, MAX_TIME_MS) or 0.0),
    )


def verdict_body(v: Verdict) -> Body:
    """The JSON of a verdict (what the web page sends)."""
    return {
        "verdict_id": v.verdict_id,
        "case_id": v.case_id,
        "step": v.step,
        "reviewer": v.reviewer,
        "role": v.role,
        "action": v.action,
        "note": v.note,
        "at": v.at_ms,
    }


@dataclass(frozen=True, slots=True)
class CaseFile:
    """What does not change over a case's life: the transaction (tokenised), the automated decision,
    the card's recent history, and the hash of the decision record that opened it."""

    case_id: str
    event_id: str
    card_token: str
    card_masked: str
    amount: float
    country: str
    merchant_category: str
    event_time_ms: int
    automated: Automated
    card_history: tuple[PastTransaction, ...]
    input_hash: str
    rationale: str | None = None


def case_file(
    facts: DecisionFacts, tokens: CardTokenizer, history: tuple[PastTransaction, ...], raw_hash: str
) -> CaseFile:
    """The case file of a decision that needs people (the card id becomes a token and a mask here)."""
    assert facts.automated is not None, "only flagged decisions open cases"
    return CaseFile(
        case_id=case_id_for(facts.event_id),
        event_id=facts.event_id,
        card_token=tokens.token(facts.card_id),
        card_masked=mask(facts.card_id),
        amount=facts.amount or 0.0,
        country=facts.country or "",
        merchant_category=facts.merchant_category or "",
        event_time_ms=facts.event_time_ms,
        automated=facts.automated,
        card_history=history,
        input_hash=raw_hash,
        rationale=facts.rationale,
    )


def _entry(e: Entry) -> Body:
    if isinstance(e, Accepted):
        return {"kind": "verdict", **verdict_body(e.verdict), "effect": e.effect}
    return {
        "kind": "escalation",
        "step": e.step,
        "from_role": e.from_role,
        "to_role": e.to_role,
        "at": e.at_ms,
        "deadline": e.deadline_ms,
    }


def _step_status(case: Case, index: int) -> str:
    step = case.steps[index]
    if step.verdict is not None:
        return "approved" if step.verdict.action == "approve" else "declined"
    if case.outcome is not None:
        return "expired" if index == case.current and case.outcome.by != "chain" else "not_reached"
    return "open" if index == case.current else "waiting"


def _step(case: Case, index: int) -> Body:
    step = case.steps[index]
    v = step.verdict
    return {
        "step": index,
        "role": step.spec.role,
        "sla_s": step.spec.sla_s,
        "required_role": step.required,
        "deadline": step.deadline_ms,
        "escalations": step.escalations,
        "status": _step_status(case, index),
        "reviewer": v.reviewer if v else None,
        "reviewer_role": v.role if v else None,
        "verdict_id": v.verdict_id if v else None,
        "note": v.note if v else None,
        "at": v.at_ms if v else None,
    }


def _outcome(o: Outcome | None) -> Body | None:
    return None if o is None else {"decision": o.decision, "by": o.by, "at": o.at_ms, "flags": list(o.flags)}


def _chain(chain: Chain) -> Body:
    return {
        "name": chain.name,
        "policy_version": chain.policy_version,
        "roles": list(chain.roles),
        "default_action": chain.default_action,
    }


def _automated(a: Automated) -> Body:
    return {
        "decision": a.decision,
        "score": a.score,
        "rules": list(a.rules),
        "model_version": a.model_version,
        "flags": list(a.flags),
        "features": dict(a.features),
        "decided_at": a.decided_at_ms,
    }


def case_body(case: Case, f: CaseFile, event: str, updated_at_ms: float) -> Body:
    """A ``review-cases`` snapshot: everything a reviewer's page shows, after ``event``
    (opened, verdict, escalated, closed)."""
    return {
        "case_id": case.case_id,
        "event": event,
        "status": case.status,
        "opened_at": case.opened_at_ms,
        "updated_at": updated_at_ms,
        "transaction": {
            "event_id": f.event_id,
            "card_token": f.card_token,
            "card_masked": f.card_masked,
            "amount": f.amount,
            "country": f.country,
            "merchant_category": f.merchant_category,
            "event_time": f.event_time_ms,
        },
        "automated": _automated(f.automated),
        "chain": _chain(case.chain),
        "steps": [_step(case, i) for i in range(len(case.steps))],
        "current_step": case.current,
        "history": [_entry(e) for e in case.history],
        "card_history": [
            {
                "amount": p.amount,
                "merchant_category": p.merchant_category,
                "country": p.country,
                "decision": p.decision,
                "event_time": p.event_time_ms,
            }
            for p in f.card_history
        ],
        "rationale": f.rationale,
        "outcome": _outcome(case.outcome),
    }


def final_body(case: Case, f: CaseFile) -> Body:
    """A ``final-decisions`` record: the outcome with the chain's whole history."""
    assert case.outcome is not None, "only a closed case has a final decision"
    return {
        "case_id": case.case_id,
        "event_id": f.event_id,
        "card_token": f.card_token,
        "decision": case.outcome.decision,
        "by": case.outcome.by,
        "flags": list(case.outcome.flags),
        "decided_at": case.outcome.at_ms,
        "opened_at": case.opened_at_ms,
        "amount": f.amount,
        "automated": _automated(f.automated),
        "chain": _chain(case.chain),
        "steps": [_step(case, i) for i in range(len(case.steps))],
        "history": [_entry(e) for e in case.history],
    }


def rejection_body(r: Rejected) -> Body:
    """A ``review-rejections`` record: which verdict, and why the case refused it."""
    body = verdict_body(r.verdict)
    del body["note"]  # every reviewer's page reads this topic; a refused note stays out of it
    return {**body, "code": r.code, "reason": r.reason}


def audit_body(
    what: str,
    who: Body,
    when_ms: float,
    why: str,
    *,
    case_file: CaseFile | None,
    policy_version: str,
    input_hash: str,
    details: Body | None = None,
) -> Body:
    """An ``audit`` record: what happened, who did it, when, why, on which model and policy versions,
    and the hash of the input it acted on. ``when`` comes from the inputs, so a replay writes the
    same record."""
    return {
        "what": what,
        "who": who,
        "when": when_ms,
        "why": why,
        "case_id": case_file.case_id if case_file else None,
        "event_id": case_file.event_id if case_file else None,
        "card_token": case_file.card_token if case_file else None,
        "model_version": case_file.automated.model_version if case_file else None,
        "policy_version": policy_version,
        "input_hash": input_hash,
        "details": details or {},
    }


def case_from_body(body: Body) -> Case:
    """The :class:`Case` a ``review-cases`` snapshot describes (the web page checks a verdict against it
    with :func:`models.review_case.admissible` before sending it)."""
    chain_obj = body["chain"]
    specs = tuple(StepSpec(s["role"], float(s["sla_s"])) for s in body["steps"])
    chain = Chain(
        chain_obj["name"], chain_obj["policy_version"], tuple(chain_obj["roles"]), specs, chain_obj["default_action"]
    )
    case_id = body["case_id"]
    steps = []
    for s, spec in zip(body["steps"], specs, strict=True):
        verdict = None
        if s["status"] in ("approved", "declined"):
            action = "approve" if s["status"] == "approved" else "decline"
            verdict = Verdict(
                s["verdict_id"], case_id, s["step"], s["reviewer"], s["reviewer_role"], action, s["note"], s["at"]
            )
        steps.append(Step(spec, s["required_role"], s["deadline"], s["escalations"], verdict))
    history: list[Entry] = []
    for e in body["history"]:
        if e["kind"] == "verdict":
            v = Verdict(e["verdict_id"], case_id, e["step"], e["reviewer"], e["role"], e["action"], e["note"], e["at"])
            history.append(Accepted(v, e["effect"]))
        else:
            history.append(Escalated(e["step"], e["from_role"], e["to_role"], e["at"], e["deadline"]))
    o = body["outcome"]
    outcome = None if o is None else Outcome(o["decision"], o["by"], o["at"], tuple(o["flags"]))
    return Case(
        case_id=case_id,
        chain=chain,
        opened_at_ms=body["opened_at"],
        steps=tuple(steps),
        current=body["current_step"],
        info_requested=body["status"] == "info_requested",
        outcome=outcome,
        history=tuple(history),
        seen=frozenset(e.verdict.verdict_id for e in history if isinstance(e, Accepted)),
    )
