"""The reviewer web app (Starlette, server-rendered Jinja2 pages, one small script; no build step).

    sluice review serve            # http://127.0.0.1:8700 (SLUICE_REVIEW_HOST / SLUICE_REVIEW_PORT)

* ``/login``: sign in with a reviewer id and password (``sluice review add-reviewer``).
* ``/``: the queue: open cases whose open step needs the signed-in reviewer's role,
  minus the ones they already filled a step of, most urgent SLA first.
* ``/cases/<id>``: the transaction (card masked), features, model score, rules
  fired, the rationale when a model gave one, the card's recent decisions, the
  chain so far; approve / decline / request-info with a required note.
* ``POST /cases/<id>/verdict``: checked on the server (CSRF, the role's rank
  against the step, four-eyes, the open step) with the same rules the flow
  applies (:func:`models.review_case.admissible`), then produced to
  ``review-verdicts``; the page then polls ``/api/verdicts/<id>`` until the flow
  reports the outcome (accepted, rejected with the reason, the final decision).
* ``/healthz``: whether the board has caught up with the topics.

Production mode (``SLUICE_REVIEW_PRODUCTION=1``) refuses to start without a
session secret and a credentials file, and marks cookies ``Secure``; in
development, a missing secret is generated per process and missing credentials
become a few demo reviewers with random passwords, printed once at start.
"""

from __future__ import annotations

import secrets
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message, Producer
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage

from models.card_token import redact_numbers
from models.review_case import ACTIONS, Verdict, admissible
from models.review_wire import MAX_NOTE_CHARS, case_from_body, verdict_body
from operators.kafka.admin import log, require_topics
from sluice.review_web.auth import (
    CredentialsError,
    Reviewer,
    Reviewers,
    Session,
    SessionCodec,
    SignInThrottle,
    csrf_ok,
)
from sluice.review_web.board import Feed, ReviewBoard
from sluice.settings import MIN_SECRET_CHARS, ReviewSettings, SettingsError

HERE = Path(__file__).resolve().parent
COOKIE = "sluice_review"
DEMO_REVIEWERS = (("analyst1", "analyst"), ("analyst2", "analyst"), ("senior1", "senior"), ("senior2", "senior"))
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
REFUSED_STATUS = {"role_too_junior": 403, "four_eyes": 403, "unknown_role": 403, "invalid": 400}


class VerdictNotSent(RuntimeError):
    """Kafka did not take the verdict."""


class SecurityHeaders:
    """Adds the security headers (a strict CSP: the pages run only their own script) to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: ASGIMessage) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


@dataclass
class ReviewService:
    """Everything the handlers share."""

    settings: ReviewSettings
    reviewers: Reviewers
    board: ReviewBoard
    codec: SessionCodec
    throttle: SignInThrottle
    templates: Jinja2Templates
    producer: Producer | None = None
    feed: Feed | None = None

    def send(self, verdict: Verdict) -> None:
        """Produce a verdict and wait until Kafka has it (the page must not claim a verdict Kafka lost)."""
        assert self.producer is not None
        errors: list[KafkaError] = []

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(err)

        self.producer.produce(
            self.settings.verdicts_topic,
            key=verdict.case_id.encode(),
            value=orjson.dumps(verdict_body(verdict)),
            on_delivery=delivered,
        )
        if self.producer.flush(10) or errors:
            raise VerdictNotSent(errors[0].str() if errors else "not delivered within 10 s")


def _service(request: Request) -> ReviewService:
    service: ReviewService = request.app.state.review
    return service


def _session(request: Request) -> Session | None:
    return _service(request).codec.read(request.cookies.get(COOKIE))


def _signed_in(request: Request) -> tuple[Session, Reviewer] | None:
    session = _session(request)
    reviewer = _service(request).reviewers.get(session.reviewer if session else None)
    return (session, reviewer) if session is not None and reviewer is not None else None


def _with_cookie(response: Response, request: Request, value: str) -> Response:
    service = _service(request)
    response.set_cookie(
        COOKIE,
        value,
        max_age=int(service.codec.lifetime_s),
        httponly=True,
        samesite="strict",
        secure=service.settings.review_production,
        path="/",
    )
    return response


def _page(request: Request, name: str, context: dict[str, Any], status: int = 200) -> Response:
    now_ms = time.time() * 1000.0
    return _service(request).templates.TemplateResponse(
        request, name, {"now_ms": now_ms, **context}, status_code=status
    )


def _to_login() -> Response:
    return RedirectResponse("/login", status_code=303)


async def login_page(request: Request) -> Response:
    session = _session(request)
    if session is not None and session.reviewer and _service(request).reviewers.get(session.reviewer):
        return RedirectResponse("/", status_code=303)
    if session is not None and session.reviewer is None:  # keep it: a second tab's form stays valid
        return _page(request, "login.html", {"csrf": session.csrf, "error": ""})
    cookie = _service(request).codec.issue(None)
    anon = _service(request).codec.read(cookie)
    assert anon is not None
    return _with_cookie(_page(request, "login.html", {"csrf": anon.csrf, "error": ""}), request, cookie)


async def login(request: Request) -> Response:
    service = _service(request)
    form = await request.form()
    session = _session(request)
    if not csrf_ok(session, form.get("csrf")):
        return _page(request, "error.html", {"message": "The sign-in form expired: reload the page."}, 403)
    assert session is not None
    reviewer_id, password = str(form.get("reviewer", "")), str(form.get("password", ""))
    if not service.throttle.begin(reviewer_id):
        error, status = "Too many failed sign-ins for this id: wait a minute.", 429
    else:
        reviewer = await run_in_threadpool(service.reviewers.authenticate, reviewer_id, password)
        if reviewer is not None:
            service.throttle.succeeded(reviewer_id)
            return _with_cookie(RedirectResponse("/", status_code=303), request, service.codec.issue(reviewer.id))
        error, status = "Unknown reviewer or wrong password.", 401
    return _page(request, "login.html", {"csrf": session.csrf, "error": error}, status)


async def logout(request: Request) -> Response:
    form = await request.form()
    if not csrf_ok(_session(request), form.get("csrf")):
        return _page(request, "error.html", {"message": "The form expired: reload the page."}, 403)
    return _with_cookie(_to_login(), request, _service(request).codec.issue(None))


async def queue(request: Request) -> Response:
    who = _signed_in(request)
    if who is None:
        return _to_login()
    session, reviewer = who
    board = _service(request).board
    cases, total = board.queue(reviewer.role, reviewer.id)
    context = {
        "reviewer": reviewer,
        "csrf": session.csrf,
        "cases": cases,
        "total": total,
        "ready": board.ready.is_set(),
    }
    return _page(request, "queue.html", context)


def _probe(case_id: str, body: dict[str, Any], reviewer: Reviewer) -> Verdict:
    return Verdict(
        "probe", case_id, body["current_step"], reviewer.id, reviewer.role, "approve", "-", time.time() * 1e3
    )


def _case_page(
    request: Request, session: Session, reviewer: Reviewer, case_id: str, error: str = "", status: int = 200
) -> Response:
    service = _service(request)
    body = service.board.case(case_id)
    if body is None:
        return _page(request, "error.html", {"message": f"No case {case_id} (yet).", "reviewer": reviewer}, 404)
    refused = admissible(case_from_body(body), _probe(case_id, body, reviewer))
    verdict_id = request.query_params.get("verdict", "")
    state = service.board.verdict(verdict_id) if verdict_id else None
    context = {
        "reviewer": reviewer,
        "csrf": session.csrf,
        "case": body,
        "final": service.board.final(case_id),
        "refused": refused.reason if refused is not None else "",
        "verdict": state if state is not None and state.reviewer == reviewer.id else None,
        "actions": ACTIONS,
        "max_note": MAX_NOTE_CHARS,
        "error": error,
    }
    return _page(request, "case.html", context, status)


async def case_page(request: Request) -> Response:
    who = _signed_in(request)
    if who is None:
        return _to_login()
    return _case_page(request, *who, request.path_params["case_id"])


async def submit_verdict(request: Request) -> Response:
    who = _signed_in(request)
    if who is None:
        return _to_login()
    session, reviewer = who
    service = _service(request)
    case_id = request.path_params["case_id"]
    form = await request.form()
    if not csrf_ok(session, form.get("csrf")):
        return _page(
            request, "error.html", {"message": "The form expired: reload the case.", "reviewer": reviewer}, 403
        )
    body = service.board.case(case_id)
    if body is None:
        return _page(request, "error.html", {"message": f"No case {case_id}.", "reviewer": reviewer}, 404)
    try:
        step = int(str(form.get("step", "")))
    except ValueError:
        step = -1
    action, note = str(form.get("action", "")), str(form.get("note", "")).strip()
    if step < 0 or action not in ACTIONS or not note or len(note) > MAX_NOTE_CHARS:
        error = f"Choose approve, decline or request info, and write a note (1 to {MAX_NOTE_CHARS} characters)."
        return _case_page(request, session, reviewer, case_id, error=error, status=400)
    note = redact_numbers(note)  # before it leaves for Kafka: the verdicts topic must not hold card numbers either
    verdict = Verdict(uuid.uuid4().hex, case_id, step, reviewer.id, reviewer.role, action, note, time.time() * 1e3)
    refused = admissible(case_from_body(body), verdict)
    if refused is not None:
        status = REFUSED_STATUS.get(refused.code, 409)
        return _case_page(request, session, reviewer, case_id, error=refused.reason, status=status)
    try:
        await run_in_threadpool(service.send, verdict)
    except VerdictNotSent as exc:
        error = f"Kafka did not take the verdict ({exc}); nothing was recorded: try again."
        return _case_page(request, session, reviewer, case_id, error=error, status=503)
    service.board.submitted(verdict)
    return RedirectResponse(f"/cases/{case_id}?verdict={verdict.verdict_id}", status_code=303)


async def verdict_status(request: Request) -> Response:
    who = _signed_in(request)
    if who is None:
        return JSONResponse({"error": "sign in"}, status_code=401)
    board = _service(request).board
    state = board.verdict(request.path_params["verdict_id"])
    if state is None or state.reviewer != who[1].id:
        return JSONResponse({"error": "no such verdict of yours"}, status_code=404)
    case = board.case(state.case_id)
    final = board.final(state.case_id)
    return JSONResponse(
        {
            "verdict_id": state.verdict_id,
            "case_id": state.case_id,
            "status": state.status,
            "detail": state.detail,
            "case_status": case["status"] if case else None,
            "final": {k: final[k] for k in ("decision", "by", "flags", "decided_at")} if final else None,
        }
    )


async def healthz(request: Request) -> Response:
    service = _service(request)
    feed_error = service.feed.error if service.feed is not None else None
    body = {"ready": service.board.ready.is_set() and feed_error is None, "feed_error": feed_error}
    return JSONResponse({**body, **service.board.counts()}, status_code=200 if feed_error is None else 503)


def _when(ms: float | None) -> str:
    if ms is None:
        return "—"
    return datetime.fromtimestamp(ms / 1000.0, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _due(deadline_ms: float | None, now_ms: float) -> str:
    if deadline_ms is None:
        return "—"
    minutes = (deadline_ms - now_ms) / 60_000.0
    if minutes < 0:
        return f"overdue {-minutes:.0f} min" if minutes <= -1 else "overdue"
    return f"in {minutes:.0f} min" if minutes >= 1 else "in < 1 min"


def _money(amount: float | None) -> str:
    return "—" if amount is None else f"{amount:,.2f}"


def templates() -> Jinja2Templates:
    t = Jinja2Templates(directory=str(HERE / "templates"))
    t.env.filters.update({"when": _when, "due": _due, "money": _money})
    return t


def create_app(
    settings: ReviewSettings, reviewers: Reviewers, session_secret: bytes, board: ReviewBoard | None = None
) -> Starlette:
    """The app; its lifespan starts the Kafka feed and the verdict producer (a given ``board`` is used as is)."""
    service = ReviewService(
        settings,
        reviewers,
        board or ReviewBoard(),
        SessionCodec(session_secret, settings.review_session_hours * 3600.0),
        SignInThrottle(),
        templates(),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        conn = settings.connection()
        service.producer = Producer(conn.producer_config(logger=log))
        if board is None:
            topics = {
                "cases": settings.cases_topic,
                "rejections": settings.rejections_topic,
                "final": settings.final_decisions_topic,
                "rationales": settings.rationale_topic,
            }
            service.feed = Feed(conn, service.board, topics)
            service.feed.start()
        try:
            yield
        finally:
            if service.feed is not None:
                service.feed.stop()
                service.feed.join(5)
            service.producer.flush(5)

    app = Starlette(
        routes=[
            Route("/", queue),
            Route("/login", login_page, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/cases/{case_id}", case_page, methods=["GET"]),
            Route("/cases/{case_id}/verdict", submit_verdict, methods=["POST"]),
            Route("/api/verdicts/{verdict_id}", verdict_status),
            Route("/healthz", healthz),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ],
        lifespan=lifespan,
    )
    app.state.review = service
    app.add_middleware(SecurityHeaders)
    return app


def session_secret(settings: ReviewSettings) -> bytes:
    """The cookie-signing secret: required in production, generated per process in development."""
    if len(settings.review_session_secret) >= MIN_SECRET_CHARS:
        return settings.review_session_secret.encode()
    if settings.review_production or settings.review_session_secret:
        raise SettingsError(f"SLUICE_REVIEW_SESSION_SECRET must hold at least {MIN_SECRET_CHARS} characters")
    print("sluice review: no SLUICE_REVIEW_SESSION_SECRET: sessions end when this process does", file=sys.stderr)
    return secrets.token_bytes(32)


def load_reviewers(settings: ReviewSettings) -> Reviewers:
    """The credentials file; in development without one, demo reviewers with random passwords (printed)."""
    if settings.review_credentials_file:
        try:
            reviewers = Reviewers.load(Path(settings.review_credentials_file))
        except CredentialsError as exc:
            raise SettingsError(f"SLUICE_REVIEW_CREDENTIALS_FILE: {exc}") from None
        if not reviewers:
            raise SettingsError(f"SLUICE_REVIEW_CREDENTIALS_FILE={settings.review_credentials_file} lists no reviewer")
        return reviewers
    if settings.review_production:
        raise SettingsError("SLUICE_REVIEW_CREDENTIALS_FILE is required in production (SLUICE_REVIEW_PRODUCTION=1)")
    reviewers = Reviewers()
    lines = []
    for rid, role in DEMO_REVIEWERS:
        password = secrets.token_urlsafe(9)
        reviewers.add(rid, role, password)
        lines.append(f"  {rid:10s} {role:8s} {password}")
    print("sluice review: no SLUICE_REVIEW_CREDENTIALS_FILE: development sign-ins for this process:", file=sys.stderr)
    print("\n".join(lines), file=sys.stderr)
    return reviewers


def serve(settings: ReviewSettings) -> int:
    """``sluice review serve``: check the configuration and the topics, then serve until interrupted."""
    import uvicorn

    secret = session_secret(settings)
    reviewers = load_reviewers(settings)
    topics = [settings.cases_topic, settings.rejections_topic, settings.final_decisions_topic, settings.verdicts_topic]
    require_topics(settings.connection(), [*topics, *([settings.rationale_topic] if settings.rationale_topic else [])])
    app = create_app(settings, reviewers, secret)
    print(f"sluice review: http://{settings.review_host}:{settings.review_port}/", file=sys.stderr, flush=True)
    uvicorn.run(app, host=settings.review_host, port=settings.review_port, log_level="warning", access_log=False)
    return 0
