"""Review chains: the fraud flow's ``review`` decisions (and large declines) go to people, step by step.

    python -m bytewax.run "dataflows.review:from_env()" -r .recovery-review -s 1 -b 0
    sluic run review -- -r .recovery-review -s 1 -b 0                      # the same

fraud-decisions -> parse (bad -> DLQ) -> per card: the last decisions (history)
-> the ones that need people -> case file (card id -> keyed token + mask)
review-policies -> parse + validate (bad -> DLQ) -┐
                                                  ├-> one "policy" key: the active
   case files ------------------------------------┘   policy picks each case's chain
review-verdicts -> parse (bad -> DLQ) -┐
   new cases with their chain ---------┴-> per case id: the state machine
      (models.review_case: verdicts, four-eyes, role ranks, SLA timers on the
      injected clock, escalation, default action)
-> review-cases (a snapshot after every change), review-rejections (refused
   verdicts with the reason), final-decisions (once per case), audit (every
   opening, escalation, verdict and final decision; hash-chained per partition)

The fraud decision path never waits on any of this: it is another flow reading
the decisions topic. Output is exactly-once (``SLUICE_EXACTLY_ONCE``, default
on; run with ``-r``): every record carries a ``sluice.id`` derived from the input
that caused it, and records a deadline causes carry one derived from the case
and the step (``escalate/<case>/<step>/<n>``); a final decision's is
``final/<case>``, so a case is never decided twice, even when a replay after a
crash meets a deadline at another moment than the first run did. Times in every
record come from the inputs (the automated decision's time, the verdict's time,
the deadlines they imply), so a replay rewrites the same records. Configuration:
``SLUICE_*`` variables (:class:`sluice.settings.ReviewSettings`).

Hook for model rationales: a decision that carries a ``rationale`` string passes
it to the case (``rationale`` in the case snapshot), and the web app can also
read rationales from their own topic (``SLUICE_RATIONALE_TOPIC``); the case page
shows either when present.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow

from dataflows.runtime import flow_from_env, kafka_source
from models.card_token import CardTokenizer
from models.review_case import (
    Accepted,
    Case,
    Closed,
    Escalated,
    Event,
    Rejected,
    Verdict,
    advance_time,
    apply_verdict,
    open_case,
)
from models.review_policy import CaseFacts, ReviewPolicy, default_policy, parse_policy
from models.review_wire import (
    CaseFile,
    DecisionFacts,
    PastTransaction,
    audit_body,
    case_body,
    case_file,
    final_body,
    input_hash,
    parse_decision,
    parse_verdict,
    rejection_body,
)
from models.wire import InvalidEvent
from operators.clock import Clock, utc_now
from operators.dead_letter import DeadLetter, parse_or_dead_letter
from operators.kafka.output import kafka_output
from operators.kafka.records import ID_HEADER, KafkaRecord, Position, SourceRecord
from operators.session_memory import session_memory
from operators.timed_machine import timed_machine
from sluice.settings import ReviewSettings, SettingsError
from state.hash_chain import canonical_json

Body = dict[str, Any]
SYSTEM = {"kind": "system", "id": "review-flow"}
FRAUD_FLOW = {"kind": "system", "id": "fraud-flow"}


@dataclass(frozen=True, slots=True)
class CaseRequest:
    """A decision that needs people: its case file (tokenised) and where it came from."""

    file: CaseFile
    facts: CaseFacts
    position: Position


@dataclass(frozen=True, slots=True)
class PolicyUpdate:
    """A published policy (valid by now) and its record."""

    policy: ReviewPolicy
    source: SourceRecord


@dataclass(frozen=True, slots=True)
class OpenCase:
    """A case to open, with the chain the active policy gave it."""

    request: CaseRequest
    case: Case


@dataclass(frozen=True, slots=True)
class VerdictIn:
    """A parsed verdict, where it came from and the hash of its bytes."""

    verdict: Verdict
    position: Position
    raw_hash: str


@dataclass(frozen=True)
class Topics:
    """Where each kind of output goes."""

    cases: str
    rejections: str
    final: str
    audit: str
    dlq: str

    @classmethod
    def of(cls, s: ReviewSettings) -> Topics:
        return cls(s.cases_topic, s.rejections_topic, s.final_decisions_topic, s.audit_topic, s.dlq_topic)


def _record(topic: str, key: str, body: Body, ref: bytes) -> KafkaRecord:
    """An output record in the canonical encoding, identified by ``ref`` (its ``sluice.id``)."""
    return KafkaRecord(topic, key.encode(), canonical_json(body), [(ID_HEADER, ref)])


# --- policies: one key holds the active policy and gives each new case its chain ---


@dataclass(frozen=True)
class PolicyBook:
    """The latest published policy and the digest of every version seen (a version names one content)."""

    active: ReviewPolicy | None = None
    versions: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ChainKeeper:
    """The ``chains`` step: activates published policies and resolves the chain of each new case."""

    start_policy: ReviewPolicy
    topics: Topics

    def __call__(self, book: PolicyBook | None, item: CaseRequest | PolicyUpdate) -> tuple[PolicyBook, list[Any]]:
        book = book or PolicyBook()
        if isinstance(item, CaseRequest):
            policy = book.active or self.start_policy
            chain = policy.chain_for(item.facts)
            opened_at = item.file.automated.decided_at_ms
            return book, [OpenCase(item, open_case(item.file.case_id, chain, opened_at))]
        return self._publish(book, item)

    def _publish(self, book: PolicyBook, update: PolicyUpdate) -> tuple[PolicyBook, list[Any]]:
        new, src = update.policy, update.source
        known = dict(book.versions)
        known.setdefault(self.start_policy.version, self.start_policy.digest)
        ref = src.position.id
        active = book.active or self.start_policy
        if (new.version, new.digest) == (active.version, active.digest):
            return book, []  # the active policy published again
        if known.get(new.version, new.digest) != new.digest:
            reason = f"policy version {new.version!r} is already taken by other content: publish it as a new version"
            return book, [
                DeadLetter(reason, "chains", src).to_record(self.topics.dlq),
                self._audit(update, reason, ref),
            ]
        versions = book.versions if new.version in known else (*book.versions, (new.version, new.digest))
        return PolicyBook(new, versions), [self._audit(update, "", ref)]  # a new version, or an earlier one back

    def _audit(self, update: PolicyUpdate, refused: str, ref: bytes) -> KafkaRecord:
        p = update.policy
        body = audit_body(
            "policy_rejected" if refused else "policy_activated",
            {"kind": "publisher", "id": p.published_by or "unknown"},
            float(update.source.timestamp_ms),
            refused or f"policy {p.version} applies to cases opened from now on",
            case_file=None,
            policy_version=p.version,
            input_hash=input_hash(update.source.value),
            details={"chains": [c.name for c in p.chains], "roles": list(p.roles), "digest": p.digest},
        )
        return _record(self.topics.audit, "policy", body, ref + b"#audit")


# --- cases: one state machine per case id ---


@dataclass(frozen=True)
class CaseMemory:
    """What the ``cases`` step keeps per case (a closed case's file loses the card's history)."""

    file: CaseFile
    case: Case
    forget_at_ms: float | None = None


def _ms(t: datetime) -> float:
    return t.timestamp() * 1000.0


def _who(v: Verdict) -> Body:
    return {"kind": "reviewer", "id": v.reviewer, "role": v.role}


@dataclass
class CaseMachine:
    """One case's :class:`operators.timed_machine.Machine`: turns the pure transitions of
    :mod:`models.review_case` into records, each with a stable ``sluice.id``."""

    topics: Topics
    retention_ms: float
    memory: CaseMemory | None = None
    gone: bool = False
    out: list[KafkaRecord] = field(default_factory=list)

    @classmethod
    def build(cls, topics: Topics, retention_s: float, resume: CaseMemory | None) -> CaseMachine:
        return cls(topics, retention_s * 1000.0, resume)

    # Machine protocol
    def on_items(self, items: list[OpenCase | VerdictIn], now: datetime) -> list[KafkaRecord]:
        """Each verdict is applied at the time it was given (SLAs that fell due before it first), then the
        case moves on to ``now``: a flow behind its input (a backlog, a restart) must not let an SLA expire
        over a verdict that was on time, and a replay must decide as the first run did."""
        self.out = []
        for item in items:
            if isinstance(item, OpenCase):
                self._open(item, now)
            else:
                self._advance(min(now, datetime.fromtimestamp(item.verdict.at_ms / 1000.0, tz=UTC)))
                self._verdict(item)
        self._advance(now)
        return self.out

    def on_time(self, now: datetime) -> list[KafkaRecord]:
        self.out = []
        self._advance(now)
        m = self.memory
        if m is not None and m.forget_at_ms is not None and _ms(now) >= m.forget_at_ms:
            self.gone = True
        return self.out

    def wake_at(self) -> datetime | None:
        m = self.memory
        if m is None:
            return None
        due = m.forget_at_ms if m.case.closed else m.case.next_deadline_ms()
        return None if due is None else datetime.fromtimestamp(due / 1000.0, tz=UTC)

    def finished(self) -> bool:
        return self.memory is None or self.gone

    def snapshot(self) -> CaseMemory | None:
        return self.memory

    # transitions
    def _open(self, item: OpenCase, now: datetime) -> None:
        if self.memory is not None:
            return  # the same decision again (the fraud flow is at-least-once): the case is already open
        f = item.request.file
        self.memory = CaseMemory(f, item.case)
        ref = item.request.position.id
        chain, a = item.case.chain, f.automated
        why = (
            f"automated decision {a.decision} (score {a.score:.3f}; rules: {', '.join(a.rules) or 'none'}) "
            f"needs people: chain {chain.name}, {' then '.join(s.role for s in chain.steps)}"
        )
        details = {"decision": a.decision, "score": a.score, "rules": list(a.rules), "chain": chain.name}
        self._audit("case_opened", FRAUD_FLOW, a.decided_at_ms, why, f.input_hash, ref, details)
        self._snapshot("opened", a.decided_at_ms, ref)
        self._advance(now)  # opened late (a backlog): deadlines already past apply at once

    def _verdict(self, item: VerdictIn) -> None:
        v, ref = item.verdict, item.position.id
        if self.memory is None:
            self._events([Rejected(v, "unknown_case", f"no case {v.case_id} is open here")], ref, item.raw_hash)
            return
        case, events = apply_verdict(self.memory.case, v)
        self._update(case)
        self._events(events, ref, item.raw_hash)

    def _advance(self, now: datetime) -> None:
        if self.memory is None or self.memory.case.closed:
            return
        case, events = advance_time(self.memory.case, _ms(now))
        if events:
            self._update(case)
            self._events(events, b"", self._file_hash())

    def _update(self, case: Case) -> None:
        assert self.memory is not None
        if case.closed and self.memory.forget_at_ms is None:
            assert case.outcome is not None
            self.memory = replace(self.memory, case=case, forget_at_ms=case.outcome.at_ms + self.retention_ms)
        else:
            self.memory = replace(self.memory, case=case)

    def _file_hash(self) -> str:
        return self.memory.file.input_hash if self.memory else ""

    def _events(self, events: list[Event], ref: bytes, raw_hash: str) -> None:
        """Records for ``events`` caused by the input ``ref`` (empty: by the clock)."""
        last_ref, last_at, kind = b"", 0.0, ""
        for e in events:
            if isinstance(e, Rejected):
                self._rejected(e, ref, raw_hash)
                continue
            if isinstance(e, Accepted):
                last_ref, last_at, kind = ref, e.verdict.at_ms, "verdict"
                self._accepted(e, ref, raw_hash)
            elif isinstance(e, Escalated):
                last_ref = f"escalate/{self._case_id}/{e.step}/{e.to_role}".encode()  # one per step and rank
                last_at, kind = e.at_ms, "escalated"
                self._escalated(e, last_ref)
            elif isinstance(e, Closed):
                last_ref, last_at, kind = f"final/{self._case_id}".encode(), e.outcome.at_ms, "closed"
                self._closed(e, last_ref, raw_hash)
        if last_ref:
            self._snapshot(kind, last_at, last_ref)

    @property
    def _case_id(self) -> str:
        assert self.memory is not None
        return self.memory.case.case_id

    def _accepted(self, e: Accepted, ref: bytes, raw_hash: str) -> None:
        v = e.verdict
        details = {"verdict_id": v.verdict_id, "step": v.step, "action": v.action, "effect": e.effect}
        self._audit("verdict_accepted", _who(v), v.at_ms, v.note, raw_hash, ref, details)

    def _rejected(self, e: Rejected, ref: bytes, raw_hash: str) -> None:
        v = e.verdict
        self.out.append(_record(self.topics.rejections, v.case_id, rejection_body(e), ref + b"#rejection"))
        details = {"verdict_id": v.verdict_id, "step": v.step, "action": v.action, "code": e.code}
        self._audit("verdict_rejected", _who(v), v.at_ms, e.reason, raw_hash, ref, details, case_id=v.case_id)

    def _escalated(self, e: Escalated, ref: bytes) -> None:
        why = f"step {e.step + 1} had no verdict by its SLA: it now needs {e.to_role} (was {e.from_role})"
        details = {"step": e.step, "from_role": e.from_role, "to_role": e.to_role, "deadline": e.deadline_ms}
        self._audit("escalated", {**SYSTEM, "id": "sla-timer"}, e.at_ms, why, self._file_hash(), ref, details)

    def _closed(self, e: Closed, ref: bytes, raw_hash: str) -> None:
        assert self.memory is not None
        case, f, o = self.memory.case, self.memory.file, e.outcome
        self.out.append(_record(self.topics.final, case.case_id, final_body(case, f), ref))
        fillers = [s.verdict for s in case.steps if s.verdict is not None]
        if o.by == "chain":
            who = _who(fillers[-1])
            names = ", ".join(f"{v.reviewer} ({v.role})" for v in fillers)
            last = fillers[-1]
            why = (
                f"approved at every step: {names}"
                if o.decision == "approve"
                else f"declined by {last.reviewer} ({last.role})"
            )
        else:
            who = {**SYSTEM, "id": "sla-timer"}
            why = f"no verdict before the last SLA passed: default action {o.decision}"
        details = {"decision": o.decision, "by": o.by, "flags": list(o.flags)}
        self._audit("final_decision", who, o.at_ms, why, raw_hash or f.input_hash, ref, details)

    def _audit(
        self,
        what: str,
        who: Body,
        when: float,
        why: str,
        raw_hash: str,
        ref: bytes,
        details: Body,
        case_id: str | None = None,
    ) -> None:
        m = self.memory
        file = m.file if m is not None else None
        policy = m.case.chain.policy_version if m is not None else ""
        body = audit_body(
            what, who, when, why, case_file=file, policy_version=policy, input_hash=raw_hash, details=details
        )
        if file is None:
            body["case_id"] = case_id or (m.case.case_id if m is not None else None)
        key = body["case_id"] or "unknown"
        self.out.append(_record(self.topics.audit, key, body, ref + b"#audit"))

    def _snapshot(self, event: str, at_ms: float, ref: bytes) -> None:
        assert self.memory is not None
        body = case_body(self.memory.case, self.memory.file, event, at_ms)
        self.out.append(_record(self.topics.cases, self.memory.case.case_id, body, ref + b"#case"))
        if self.memory.case.closed:  # kept only for late verdicts and their audit records: shed the history
            self.memory = replace(self.memory, file=replace(self.memory.file, card_history=()))


# --- wiring ---


def start_policy(settings: ReviewSettings) -> ReviewPolicy:
    """The policy in force until one is published: the policy file, or the built-in one."""
    if not settings.review_policy_file:
        return default_policy()
    path = Path(settings.review_policy_file)
    try:
        return parse_policy(path.read_bytes())
    except OSError as exc:
        raise SettingsError(f"SLUICE_REVIEW_POLICY_FILE={path}: cannot read it ({exc.strerror})") from None
    except InvalidEvent as exc:
        raise SettingsError(f"SLUICE_REVIEW_POLICY_FILE={path}: {exc}") from None


def to_request(
    tokens: CardTokenizer,
    decline_above: float,
    item: tuple[tuple[SourceRecord, DecisionFacts], tuple[PastTransaction, ...]],
) -> CaseRequest | None:
    """A case request for a decision that needs people (None for the others)."""
    (src, facts), history = item
    if not facts.needs_people(decline_above):
        return None
    return CaseRequest(case_file(facts, tokens, history, input_hash(src.value)), facts.facts(), src.position)


def _decided(item: tuple[SourceRecord, DecisionFacts | None]) -> tuple[SourceRecord, DecisionFacts] | None:
    """Decisions the parser read (it skips approvals when no history is kept)."""
    src, facts = item
    return None if facts is None else (src, facts)


def _case_key(item: OpenCase | VerdictIn) -> str:
    return item.request.file.case_id if isinstance(item, OpenCase) else item.verdict.case_id


def build_flow(settings: ReviewSettings, now_getter: Clock = utc_now, name: str = "review") -> Dataflow:
    """The review dataflow for ``settings`` (see the module docstring)."""
    tokens = CardTokenizer(settings.token_key())
    topics = Topics.of(settings)
    keeper = ChainKeeper(start_policy(settings), topics)
    source = functools.partial(kafka_source, settings)
    flow = Dataflow(name)
    # automated decisions -> the card's history -> the ones that need people
    with_history = settings.review_history_size > 0
    dec_records = op.input(
        "decisions", flow, source(settings.decisions_topic, settings.decisions_start_from or settings.start_from)
    )
    decisions = parse_or_dead_letter(
        "parse_decisions", dec_records, functools.partial(parse_decision, skip_approved=not with_history)
    )
    parsed = op.filter_map("decided", decisions.ok, _decided)
    if with_history:
        remembered = session_memory(
            "card_history",
            op.key_on("by_card", parsed, lambda sd: sd[1].card_id),
            max_turns=settings.review_history_size,
            idle_timeout=timedelta(seconds=settings.review_history_idle_s),
            remember=lambda sd: sd[1].past(),
        )
        paired = op.map("history", remembered, lambda kv: kv[1])
    else:
        paired = op.map("no_history", parsed, lambda sd: (sd, ()))
    requests = op.filter_map(
        "needs_people", paired, functools.partial(to_request, tokens, settings.review_decline_above)
    )

    # policies: one key, so every case sees the same active policy
    pol_records = op.input("policies", flow, source(settings.policies_topic, "earliest"))
    policies = parse_or_dead_letter("parse_policies", pol_records, parse_policy)
    updates = op.map("policy_update", policies.ok, lambda sp: PolicyUpdate(sp[1], sp[0]))
    chain_inputs = op.key_on("one_policy", op.merge("to_chain", requests, updates), lambda _: "policy")
    chained = op.flat_map("chained", op.stateful_map("chains", chain_inputs, keeper), lambda kv: kv[1])
    split = op.branch("opens", chained, lambda x: isinstance(x, OpenCase))

    # verdicts and new cases meet per case id
    ver_records = op.input("verdicts", flow, source(settings.verdicts_topic, settings.start_from))
    verdicts = parse_or_dead_letter("parse_verdicts", ver_records, parse_verdict)
    verdict_ins = op.map(
        "verdict_in", verdicts.ok, lambda sv: VerdictIn(sv[1], sv[0].position, input_hash(sv[0].value))
    )
    case_inputs = op.key_on("by_case", op.merge("to_cases", split.trues, verdict_ins), _case_key)
    machine = functools.partial(CaseMachine.build, topics, settings.review_closed_retention_s)
    case_records = op.map("case_records", timed_machine("cases", case_inputs, machine, now_getter), lambda kv: kv[1])

    dead = op.merge("dead", decisions.dead, policies.dead, verdicts.dead)
    dead_records = op.map("dlq_records", dead, lambda d: d.to_record(settings.dlq_topic))
    kafka_output(
        "out",
        op.merge("all_out", case_records, split.falses, dead_records),
        settings.connection(),
        settings.output_topics(),
        exactly_once=settings.exactly_once,
        transactional_id_prefix=settings.transactional_id_prefix,
        chained_topics=[settings.audit_topic],
    )
    return flow


def from_env() -> Dataflow:
    """The flow ``SLUICE_*`` variables describe, after checking Kafka and the topics."""
    return flow_from_env(ReviewSettings, build_flow, redis=False)
