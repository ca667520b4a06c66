"""One review case and its approval chain: verdicts, four-eyes, role ranks and SLA escalation (pure).

A case opens with the :class:`Chain` its policy gave it (resolved once, so a later
policy never changes a case already open) and moves only through two functions,
both pure and deterministic:

* :func:`apply_verdict`: a reviewer's verdict on the open step, accepted or
  rejected with a code and a reason a person can act on;
* :func:`advance_time`: steps whose SLA has passed escalate one role rank up
  (recorded), and a step past its SLA at the top rank closes the case with the
  chain's default action, flagged ``sla_expired``.

Rules (each rejection names the one it applies):

* one verdict id counts once (``duplicate``); a closed case takes no verdict
  (``case_closed``); a verdict names the step it is for, and only the open step
  takes verdicts (``wrong_step``: a stale verdict for a filled step, or one for a
  step not open yet);
* the reviewer's role must be one of the chain's roles (``unknown_role``) and rank
  at least the role the step needs now, which escalation raises
  (``role_too_junior``);
* four-eyes: a reviewer who filled one step cannot act on another step of the
  same chain (``four_eyes``), so "two seniors" means two different people;
* ``approve`` fills the step and opens the next (its SLA counts from that
  verdict); approving the last step closes the case approved; ``decline`` on any
  step closes it declined (the conservative outcome needs one voice);
  ``request_info`` records a question, keeps the step open and its SLA running
  (a case cannot be parked past its deadline by asking).

Times are epoch milliseconds taken from the inputs (the automated decision's
time, the verdict's time, the deadlines they give), never from a clock read
here, so replaying the same inputs gives the same case.

>>> chain = Chain("analyst-then-senior", "v1", ("analyst", "senior", "head"),
...               (StepSpec("analyst", 60), StepSpec("senior", 60)), "hold")
>>> case = open_case("c1", chain, opened_at_ms=0)
>>> case, events = apply_verdict(case, Verdict("v1", "c1", 0, "ann", "analyst", "approve", "ok", 1_000))
>>> [type(e).__name__ for e in events], case.current
(['Accepted'], 1)
>>> case, events = apply_verdict(case, Verdict("v2", "c1", 1, "ann", "head", "approve", "me again", 2_000))
>>> events[0].code
'four_eyes'
>>> case, events = advance_time(case, now_ms=61_000)   # step 2's SLA (from 1 s + 60 s) has passed
>>> [(e.from_role, e.to_role) for e in events if isinstance(e, Escalated)]
[('senior', 'head')]
>>> case, events = apply_verdict(case, Verdict("v3", "c1", 1, "sam", "senior", "approve", "fine", 62_000))
>>> events[0].code
'role_too_junior'
>>> case, events = apply_verdict(case, Verdict("v4", "c1", 1, "hal", "head", "approve", "fine", 63_000))
>>> case.outcome
Outcome(decision='approve', by='chain', at_ms=63000, flags=())
"""

from __future__ import annotations

from dataclasses import dataclass, replace

ACTIONS = ("approve", "decline", "request_info")
DEFAULT_ACTIONS = ("hold", "decline")
CLOSED_BY_CHAIN = "chain"
CLOSED_BY_SLA = "sla_default"
SLA_EXPIRED = "sla_expired"


@dataclass(frozen=True, slots=True)
class StepSpec:
    """One step of a chain as the policy writes it: who must act, and within how long."""

    role: str
    sla_s: float


@dataclass(frozen=True, slots=True)
class Chain:
    """The chain a case follows, resolved from the policy when the case opened.

    ``roles`` is the policy's ranking, most junior first: escalation moves a step
    one place right, and a reviewer may act on a step needing their rank or below.
    """

    name: str
    policy_version: str
    roles: tuple[str, ...]
    steps: tuple[StepSpec, ...]
    default_action: str

    def rank(self, role: str) -> int:
        """Position of ``role`` in the ranking (-1 for a role the chain does not know)."""
        return self.roles.index(role) if role in self.roles else -1


@dataclass(frozen=True, slots=True)
class Verdict:
    """A reviewer's verdict on one step of one case (``step`` counts from 0)."""

    verdict_id: str
    case_id: str
    step: int
    reviewer: str
    role: str
    action: str
    note: str
    at_ms: float


@dataclass(frozen=True, slots=True)
class Step:
    """A step of an open case: what it needs now, its deadline, and who filled it."""

    spec: StepSpec
    required: str  # the role it needs now: the spec's role, raised by escalations
    deadline_ms: float | None  # None until the previous step is filled
    escalations: int = 0
    verdict: Verdict | None = None  # the approve or decline that filled it

    @property
    def filled(self) -> bool:
        return self.verdict is not None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a case ended: ``approve``/``decline`` by the chain, or the default action when SLAs ran out."""

    decision: str
    by: str
    at_ms: float
    flags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Accepted:
    """A verdict the case took; ``effect`` is ``step_approved``, ``declined`` or ``info_requested``."""

    verdict: Verdict
    effect: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A verdict the case refused, with a stable ``code`` and a reason for the reviewer."""

    verdict: Verdict
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class Escalated:
    """A step's SLA passed: it now needs ``to_role``, by ``deadline_ms``."""

    step: int
    from_role: str
    to_role: str
    at_ms: float
    deadline_ms: float


@dataclass(frozen=True, slots=True)
class Closed:
    """The case ended with ``outcome`` (emitted exactly once per case)."""

    outcome: Outcome


Event = Accepted | Rejected | Escalated | Closed
Entry = Accepted | Escalated  # what the chain's history keeps


@dataclass(frozen=True, slots=True)
class Case:
    """A case's whole state: its chain, its steps, what happened so far, and how it ended."""

    case_id: str
    chain: Chain
    opened_at_ms: float
    steps: tuple[Step, ...]
    current: int = 0
    info_requested: bool = False
    outcome: Outcome | None = None
    history: tuple[Entry, ...] = ()
    seen: frozenset[str] = frozenset()  # verdict ids received, accepted or not

    @property
    def closed(self) -> bool:
        return self.outcome is not None

    @property
    def status(self) -> str:
        if self.outcome is not None:
            return "closed"
        return "info_requested" if self.info_requested else "open"

    @property
    def open_step(self) -> Step | None:
        return None if self.outcome is not None else self.steps[self.current]

    def next_deadline_ms(self) -> float | None:
        """When :func:`advance_time` next has something to do (None once closed)."""
        step = self.open_step
        return step.deadline_ms if step is not None else None

    def filled_by(self, reviewer: str) -> int | None:
        """The step ``reviewer`` filled, if any."""
        for i, step in enumerate(self.steps):
            if step.verdict is not None and step.verdict.reviewer == reviewer:
                return i
        return None


def open_case(case_id: str, chain: Chain, opened_at_ms: float) -> Case:
    """A new case on ``chain``: its first step is open, due ``sla_s`` after ``opened_at_ms``."""
    if not chain.steps:
        raise ValueError("a chain needs at least one step")
    steps = tuple(
        Step(spec, spec.role, opened_at_ms + spec.sla_s * 1000.0 if i == 0 else None)
        for i, spec in enumerate(chain.steps)
    )
    return Case(case_id, chain, opened_at_ms, steps)


def admissible(case: Case, verdict: Verdict) -> Rejected | None:
    """Why ``case`` would refuse ``verdict`` now, or None if it would take it.

    The web page asks the same question before it sends a verdict, so a reviewer
    sees the reason at once; the flow's answer is the one that counts.
    """
    if verdict.verdict_id in case.seen:
        return Rejected(verdict, "duplicate", f"verdict {verdict.verdict_id} was already received")
    if case.outcome is not None:
        o = case.outcome
        return Rejected(verdict, "case_closed", f"the case is closed: {o.decision} ({o.by.replace('_', ' ')})")
    if verdict.action not in ACTIONS:
        return Rejected(verdict, "invalid", f"action {verdict.action!r} is not one of {', '.join(ACTIONS)}")
    if verdict.step != case.current:
        done = verdict.step < case.current
        missing = verdict.step >= len(case.steps)
        state = "not a step of this chain" if missing else "already filled" if done else "not open yet"
        reason = f"step {verdict.step + 1} is {state}"
        return Rejected(verdict, "wrong_step", f"{reason}: step {case.current + 1} is the open one")
    step = case.steps[case.current]
    rank = case.chain.rank(verdict.role)
    if rank < 0:
        roles = ", ".join(case.chain.roles)
        return Rejected(verdict, "unknown_role", f"role {verdict.role!r} is not one of this chain's roles ({roles})")
    if rank < case.chain.rank(step.required):
        why = f" (escalated {step.escalations}x after its SLA passed)" if step.escalations else ""
        return Rejected(
            verdict,
            "role_too_junior",
            f"step {case.current + 1} needs {step.required} or above{why}; {verdict.role} is too junior",
        )
    earlier = case.filled_by(verdict.reviewer)
    if earlier is not None:
        return Rejected(
            verdict,
            "four_eyes",
            f"{verdict.reviewer} filled step {earlier + 1} of this chain: the same person cannot fill two steps",
        )
    return None


def apply_verdict(case: Case, verdict: Verdict) -> tuple[Case, list[Event]]:
    """``case`` after ``verdict``, and what happened (see the module docstring for the rules)."""
    refused = admissible(case, verdict)
    seen = case.seen | {verdict.verdict_id}
    if refused is not None:
        return (case if refused.code == "duplicate" else replace(case, seen=seen)), [refused]
    if verdict.action == "request_info":
        accepted = Accepted(verdict, "info_requested")
        return replace(case, seen=seen, info_requested=True, history=(*case.history, accepted)), [accepted]
    steps = list(case.steps)
    steps[case.current] = replace(steps[case.current], verdict=verdict)
    outcome: Outcome | None
    if verdict.action == "decline":
        accepted = Accepted(verdict, "declined")
        outcome = Outcome("decline", CLOSED_BY_CHAIN, verdict.at_ms)
    else:
        accepted = Accepted(verdict, "step_approved")
        last = case.current == len(steps) - 1
        outcome = Outcome("approve", CLOSED_BY_CHAIN, verdict.at_ms) if last else None
        if not last:
            nxt = steps[case.current + 1]
            steps[case.current + 1] = replace(nxt, deadline_ms=verdict.at_ms + nxt.spec.sla_s * 1000.0)
    advanced = replace(
        case,
        steps=tuple(steps),
        current=case.current if outcome is not None else case.current + 1,
        info_requested=False,
        outcome=outcome,
        history=(*case.history, accepted),
        seen=seen,
    )
    return advanced, [accepted] if outcome is None else [accepted, Closed(outcome)]


def advance_time(case: Case, now_ms: float) -> tuple[Case, list[Event]]:
    """Escalate (or close by default) every deadline at or before ``now_ms``, in deadline order.

    A flow that was down past several deadlines catches up at once: each
    escalation is recorded at the deadline that caused it, not at ``now_ms``.
    """
    events: list[Event] = []
    while case.outcome is None:
        step = case.steps[case.current]
        if step.deadline_ms is None or step.deadline_ms > now_ms:
            break
        rank = case.chain.rank(step.required)
        if rank + 1 < len(case.chain.roles):
            to_role = case.chain.roles[rank + 1]
            deadline = step.deadline_ms + step.spec.sla_s * 1000.0
            escalated = Escalated(case.current, step.required, to_role, step.deadline_ms, deadline)
            steps = list(case.steps)
            steps[case.current] = replace(
                step, required=to_role, deadline_ms=deadline, escalations=step.escalations + 1
            )
            case = replace(case, steps=tuple(steps), history=(*case.history, escalated))
            events.append(escalated)
        else:
            outcome = Outcome(case.chain.default_action, CLOSED_BY_SLA, step.deadline_ms, (SLA_EXPIRED,))
            case = replace(case, outcome=outcome, info_requested=False)
            events.append(Closed(outcome))
    return case, events
