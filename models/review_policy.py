"""Review policies: which approval chain a case gets, as versioned, validated data (pure).

A policy is a JSON object (published on the ``review-policies`` topic, or
given as a file the flow starts with)::

    {
      "version": "2026-12-01",                       # unique: cases record it
      "roles": ["analyst", "senior", "head"],        # ranks, most junior first
      "default_action": "hold",                      # hold | decline, when the last SLA passes
      "chains": [                                    # the first chain whose "when" holds
        {"name": "two-seniors", "when": {"min_amount": 10000},
         "steps": [{"role": "senior", "sla_s": 3600}, {"role": "senior", "sla_s": 3600}]},
        {"name": "analyst-then-senior",
         "when": [{"min_amount": 1000}, {"countries": ["NG", "RU"]}],   # a list: any of them
         "steps": [{"role": "analyst", "sla_s": 900}, {"role": "senior", "sla_s": 1800}]},
        {"name": "one-analyst", "steps": [{"role": "analyst", "sla_s": 900}]}   # no "when": the catch-all
      ]
    }

A ``when`` object holds when all its conditions do: ``min_amount`` (amount at
least), ``below_amount`` (amount under), ``countries`` (transaction country in),
``decisions`` (the automated decision in: review, decline), ``rules`` (any of
these rules fired). A chain may set its own ``default_action``. The last chain
must have no ``when``, so every case gets a chain. Unknown keys are errors (a
typo must not silently widen a chain), and every error names its path.

>>> policy = default_policy()
>>> [policy.chain_for(CaseFacts(a, "US", "review", ())).name for a in (50.0, 1_500.0, 25_000.0)]
['one-analyst', 'analyst-then-senior', 'two-seniors']
>>> policy.chain_for(CaseFacts(50.0, "NG", "review", ())).name
'analyst-then-senior'
>>> parse_policy(b'{"version": "x", "roles": ["analyst"], "default_action": "hold", "chains": []}')
Traceback (most recent call last):
...
models.wire.InvalidEvent: policy: 'chains' must be a non-empty list
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

import orjson

from models.review_case import DEFAULT_ACTIONS, Chain, StepSpec
from models.wire import InvalidEvent, json_object

MAX_CHAINS = 50
MAX_STEPS = 10
MAX_SLA_S = 30 * 86400.0
NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
CONDITIONS = ("min_amount", "below_amount", "countries", "decisions", "rules")
TOP_LEVEL = ("version", "roles", "default_action", "chains", "published_by", "published_at", "description")

DEFAULT_POLICY: dict[str, Any] = {
    "version": "default-1",
    "description": "built-in: amount < 1,000 one analyst; >= 1,000 or a high-risk country analyst then senior; "
    ">= 10,000 two distinct seniors",
    "roles": ["analyst", "senior", "head"],
    "default_action": "hold",
    "chains": [
        {
            "name": "two-seniors",
            "when": {"min_amount": 10_000},
            "steps": [{"role": "senior", "sla_s": 3600}, {"role": "senior", "sla_s": 3600}],
        },
        {
            "name": "analyst-then-senior",
            "when": [{"min_amount": 1000}, {"countries": ["ID", "KP", "NG", "RU", "UA", "VN"]}],
            "steps": [{"role": "analyst", "sla_s": 900}, {"role": "senior", "sla_s": 1800}],
        },
        {"name": "one-analyst", "steps": [{"role": "analyst", "sla_s": 900}]},
    ],
}


@dataclass(frozen=True, slots=True)
class CaseFacts:
    """What a chain's conditions look at: the transaction and the automated decision."""

    amount: float
    country: str
    decision: str
    rules: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Condition:
    """All of its set fields must hold (see the module docstring)."""

    min_amount: float | None = None
    below_amount: float | None = None
    countries: frozenset[str] | None = None
    decisions: frozenset[str] | None = None
    rules: frozenset[str] | None = None

    def holds(self, facts: CaseFacts) -> bool:
        return (
            (self.min_amount is None or facts.amount >= self.min_amount)
            and (self.below_amount is None or facts.amount < self.below_amount)
            and (self.countries is None or facts.country in self.countries)
            and (self.decisions is None or facts.decision in self.decisions)
            and (self.rules is None or not self.rules.isdisjoint(facts.rules))
        )


@dataclass(frozen=True, slots=True)
class ChainRule:
    """A named chain and when it applies (no conditions: always)."""

    name: str
    when: tuple[Condition, ...]
    steps: tuple[StepSpec, ...]
    default_action: str

    def applies(self, facts: CaseFacts) -> bool:
        return not self.when or any(c.holds(facts) for c in self.when)


@dataclass(frozen=True, slots=True)
class ReviewPolicy:
    """A validated policy; ``digest`` identifies its content (two versions with one name must agree)."""

    version: str
    roles: tuple[str, ...]
    default_action: str
    chains: tuple[ChainRule, ...]
    digest: str
    published_by: str = ""

    def chain_for(self, facts: CaseFacts) -> Chain:
        """The first chain that applies (the last one always does), resolved for a new case."""
        rule = next(r for r in self.chains if r.applies(facts))
        return Chain(rule.name, self.version, self.roles, rule.steps, rule.default_action)


def _fail(path: str, message: str) -> InvalidEvent:
    return InvalidEvent(f"policy: {path} {message}" if path else f"policy: {message}")


def _text(obj: dict[str, Any], key: str, path: str, max_len: int = 64, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        raise _fail(path, f"{key!r} must be a non-empty string of at most {max_len} characters")
    return value


def _number(value: Any, path: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _fail(path, f"must be a number in [{low:g}, {high:g}]")
    return float(value)


def _strings(value: Any, path: str) -> frozenset[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise _fail(path, "must be a non-empty list of strings")
    return frozenset(value)


def _condition(obj: Any, path: str) -> Condition:
    if not isinstance(obj, dict) or not obj:
        raise _fail(path, "must be an object with at least one of " + ", ".join(CONDITIONS))
    unknown = sorted(set(obj) - set(CONDITIONS))
    if unknown:
        raise _fail(path, f"has unknown condition(s) {', '.join(unknown)}: use {', '.join(CONDITIONS)}")
    limit = 1e12
    cond = Condition(
        min_amount=_number(obj["min_amount"], f"{path}.min_amount", 0, limit) if "min_amount" in obj else None,
        below_amount=_number(obj["below_amount"], f"{path}.below_amount", 0, limit) if "below_amount" in obj else None,
        countries=_strings(obj["countries"], f"{path}.countries") if "countries" in obj else None,
        decisions=_strings(obj["decisions"], f"{path}.decisions") if "decisions" in obj else None,
        rules=_strings(obj["rules"], f"{path}.rules") if "rules" in obj else None,
    )
    if cond.decisions is not None and not cond.decisions <= {"review", "decline"}:
        raise _fail(f"{path}.decisions", "may only hold review and decline")
    return cond


def _steps(value: Any, path: str, roles: tuple[str, ...]) -> tuple[StepSpec, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_STEPS:
        raise _fail(path, f"must be a list of 1 to {MAX_STEPS} steps")
    out = []
    for i, step in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(step, dict) or set(step) - {"role", "sla_s"}:
            raise _fail(where, 'must be an object {"role": ..., "sla_s": ...}')
        role = step.get("role")
        if role not in roles:
            raise _fail(f"{where}.role", f"{role!r} is not one of the policy's roles ({', '.join(roles)})")
        out.append(StepSpec(role, _number(step.get("sla_s"), f"{where}.sla_s", 1, MAX_SLA_S)))
    return tuple(out)


def _action(obj: dict[str, Any], path: str, default: str | None) -> str:
    action = obj.get("default_action", default)
    if action not in DEFAULT_ACTIONS:
        raise _fail(path, f"'default_action' must be one of {', '.join(DEFAULT_ACTIONS)}")
    return str(action)


def _chain(obj: Any, path: str, roles: tuple[str, ...], default: str) -> ChainRule:
    if not isinstance(obj, dict):
        raise _fail(path, "must be an object")
    unknown = sorted(set(obj) - {"name", "when", "steps", "default_action"})
    if unknown:
        raise _fail(path, f"has unknown key(s) {', '.join(unknown)}")
    name = _text(obj, "name", path, 64)
    when = obj.get("when")
    alternatives = [] if when is None else (when if isinstance(when, list) else [when])
    if when is not None and not alternatives:
        raise _fail(f"{path}.when", "must not be an empty list (leave it out for a catch-all)")
    conditions = tuple(
        _condition(c, f"{path}.when" + (f"[{i}]" if isinstance(when, list) else "")) for i, c in enumerate(alternatives)
    )
    return ChainRule(name, conditions, _steps(obj.get("steps"), f"{path}.steps", roles), _action(obj, path, default))


def policy_from_object(obj: dict[str, Any]) -> ReviewPolicy:
    """Validate a decoded policy; raises :class:`InvalidEvent` naming the first problem's path."""
    unknown = sorted(set(obj) - set(TOP_LEVEL))
    if unknown:
        raise _fail("", f"unknown key(s) {', '.join(unknown)}: use {', '.join(TOP_LEVEL)}")
    version = _text(obj, "version", "")
    roles = obj.get("roles")
    if (
        not isinstance(roles, list)
        or not 1 <= len(roles) <= 10
        or not all(isinstance(r, str) and NAME.fullmatch(r) for r in roles)
        or len(set(roles)) != len(roles)
    ):
        raise _fail("", "'roles' must list 1 to 10 distinct role names (lowercase letters, digits, _ or -)")
    ranked = tuple(roles)
    default = _action(obj, "", None)
    chains = obj.get("chains")
    if not isinstance(chains, list) or not chains:
        raise _fail("", "'chains' must be a non-empty list")
    if len(chains) > MAX_CHAINS:
        raise _fail("", f"'chains' holds more than {MAX_CHAINS} chains")
    rules = tuple(_chain(c, f"chains[{i}]", ranked, default) for i, c in enumerate(chains))
    if rules[-1].when:
        raise _fail(f"chains[{len(rules) - 1}]", "must have no 'when': the last chain is the catch-all")
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise _fail("", "chain names must be distinct")
    digest = hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return ReviewPolicy(version, ranked, default, rules, digest, _text(obj, "published_by", "", required=False))


def parse_policy(raw: bytes | None) -> ReviewPolicy:
    """A policy record's value (JSON) as a validated :class:`ReviewPolicy`."""
    return policy_from_object(json_object(raw))


def default_policy() -> ReviewPolicy:
    """The built-in policy (what the flow uses until a policy file or record says otherwise)."""
    return policy_from_object(DEFAULT_POLICY)
