"""Helpers for the review-chain tests: settings on the session stack, decision and verdict records,
the flow and the web app as real processes, and reading their outputs back."""

from __future__ import annotations

import re
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import orjson
import requests

from operators.kafka.admin import create_topics, read_all
from sluice.local.demo_review import wait_http_ready
from sluice.local.stack import LocalStack
from sluice.processes import FlowProcesses, free_port, init_recovery
from sluice.review_web.auth import Reviewers
from sluice.settings import ReviewSettings
from tests.helpers import produce

REVIEW_FLOW = "dataflows.review:from_env()"
TOKEN_KEY = "test-token-key-0123456789abcdef-0123456789"
PASSWORD = "correct-horse-battery"
T = TypeVar("T")
Body = dict[str, Any]


def review_settings(stack: LocalStack, **overrides: Any) -> ReviewSettings:
    """Settings on the session stack with topics and transactional ids of this test's own (created)."""
    tag = uuid.uuid4().hex[:8]
    s = replace(
        ReviewSettings(),
        brokers=stack.brokers,
        redis_url=stack.redis_url,
        **{
            "decisions_topic": f"rv-decisions-{tag}",
            "rationale_topic": f"rv-rationales-{tag}",
            "topic_partitions": 2,
            "review_token_key": TOKEN_KEY,
            **overrides,
        },
    ).with_own_topics(tag)
    create_topics(s.connection(), s.topics())
    return s


def decision(
    event_id: str,
    card: str,
    verdict: str = "review",
    amount: float = 120.0,
    *,
    country: str = "US",
    rules: tuple[str, ...] = ("velocity_burst",),
    decided_at_ms: float | None = None,
) -> tuple[bytes, bytes]:
    """A fraud decision record as ``dataflows.fraud`` writes it (key, value)."""
    now = time.time() * 1000.0 if decided_at_ms is None else decided_at_ms
    body = {
        "event_id": event_id,
        "card_id": card,
        "decision": verdict,
        "score": 0.71,
        "rules": list(rules),
        "model_version": "fraud-test-1",
        "flags": [],
        "profile_fallback": False,
        "feature_store_down": False,
        "features": {"count_1m": 4, "count_1h": 9, "distinct_1h": 3, "secs_since_prev": 12.5},
        "event_time": int(now) - 50,
        "sent_at": now - 60,
        "decided_at": now,
        "amount": amount,
        "country": country,
        "merchant_category": "electronics",
    }
    return card.encode(), orjson.dumps(body)


def verdict(
    case_id: str, step: int, reviewer: str, role: str, action: str = "approve", note: str = "checked", **extra: Any
) -> tuple[bytes, bytes]:
    """A verdict record as the web app writes it (key, value)."""
    body = {
        "verdict_id": uuid.uuid4().hex,
        "case_id": case_id,
        "step": step,
        "reviewer": reviewer,
        "role": role,
        "action": action,
        "note": note,
        "at": time.time() * 1000.0,
        **extra,
    }
    return case_id.encode(), orjson.dumps(body)


def publish_policy(settings: ReviewSettings, policy: Body) -> None:
    produce(settings, [(b"policy", orjson.dumps(policy))], topic=settings.policies_topic)


def short_sla_policy(version: str, sla_s: float, default_action: str = "decline") -> Body:
    """The built-in chains with every SLA at ``sla_s``, roles analyst < senior only (one escalation)."""
    steps = [{"role": "analyst", "sla_s": sla_s}, {"role": "senior", "sla_s": sla_s}]
    return {
        "version": version,
        "roles": ["analyst", "senior"],
        "default_action": default_action,
        "chains": [
            {"name": "analyst-then-senior", "when": {"min_amount": 1000}, "steps": steps},
            {"name": "one-analyst", "steps": steps[:1]},
        ],
    }


def policy_active(settings: ReviewSettings, version: str) -> None:
    """Wait until the flow has activated policy ``version`` (its audit record is out)."""

    def probe() -> bool:
        audit = bodies(settings, settings.audit_topic)
        return any(a["what"] == "policy_activated" and a["policy_version"] == version for a in audit)

    eventually(probe, what=f"policy {version} active")


def bodies(settings: ReviewSettings, topic: str) -> list[Body]:
    return [orjson.loads(m.value() or b"{}") for m in read_all(settings.connection(), topic)]


def eventually(probe: Callable[[], T | None], timeout_s: float = 60.0, what: str = "a condition") -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout_s`` (never a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def opened_cases(settings: ReviewSettings, count: int, timeout_s: float = 60.0) -> dict[str, Body]:
    """The first snapshot of each case, by event id, once ``count`` cases are open."""

    def probe() -> dict[str, Body] | None:
        got = {
            b["transaction"]["event_id"]: b for b in bodies(settings, settings.cases_topic) if b["event"] == "opened"
        }
        return got if len(got) >= count else None

    return eventually(probe, timeout_s, f"{count} opened cases")


def latest_cases(settings: ReviewSettings) -> dict[str, Body]:
    """The latest snapshot of every case, by case id."""
    out: dict[str, Body] = {}
    for b in bodies(settings, settings.cases_topic):
        out[b["case_id"]] = b
    return out


def finals(settings: ReviewSettings) -> dict[str, list[Body]]:
    out: dict[str, list[Body]] = {}
    for b in bodies(settings, settings.final_decisions_topic):
        out.setdefault(b["case_id"], []).append(b)
    return out


def start_review_flow(settings: ReviewSettings, work: Path, recovery: Path | None = None) -> FlowProcesses:
    """The review flow, recoverable (``-s 1``) in ``recovery`` (created when new)."""
    recovery = recovery or work / "recovery"
    if not recovery.exists():
        init_recovery(recovery)
    return FlowProcesses(REVIEW_FLOW, settings.to_env(), log_dir=work, recovery_dir=recovery, snapshot_s=1).start()


def write_reviewers(path: Path, people: dict[str, str]) -> Path:
    """A credentials file with ``{id: role}``, every password :data:`PASSWORD`."""
    reviewers = Reviewers()
    for rid, role in people.items():
        reviewers.add(rid, role, PASSWORD)
    reviewers.save(path)
    return path


@contextmanager
def web_app(settings: ReviewSettings, work: Path, people: dict[str, str]) -> Iterator[tuple[str, ReviewSettings]]:
    """``sluice review serve`` as a real process on a free port; yields its base URL and settings."""
    s = replace(
        settings,
        review_port=free_port(),
        review_credentials_file=str(write_reviewers(work / "reviewers.json", people)),
        review_session_secret="test-session-secret-0123456789abcdef-xyz",
    )
    proc = FlowProcesses(
        "", s.to_env(), log_dir=work / "web", program=[sys.executable, "-m", "sluice", "review", "serve"]
    )
    proc.start()
    base = f"http://127.0.0.1:{s.review_port}"
    try:
        wait_http_ready(base + "/healthz", proc)
        yield base, s
    finally:
        proc.stop()


def sign_in(base: str, reviewer: str, password: str = PASSWORD) -> requests.Session:
    """A signed-in HTTP session (the sign-in form's CSRF token included)."""
    http = requests.Session()
    page = http.get(base + "/login")
    token = csrf_of(page.text)
    resp = http.post(base + "/login", data={"csrf": token, "reviewer": reviewer, "password": password})
    assert resp.status_code == 200 and "/login" not in resp.url, resp.text[:500]
    return http


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)
