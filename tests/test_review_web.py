"""The reviewer web app as users run it (``sluice review serve``) on a real review flow and broker:
sign-in, CSRF, cookies and headers; the server enforcing roles and four-eyes even against a hand-made
POST; verdicts whose outcome the page learns from the flow; the rationale hook; production mode; and
the whole chain in headless Chromium (Debian's, driven by Selenium), reading the final decision from
Kafka. Screenshots of the queue and the case page go to ``$REVIEW_SCREENSHOTS`` when set."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import requests

from models.review_case import Verdict
from models.review_wire import verdict_body
from sluice.review_web.board import ReviewBoard
from tests.helpers import produce
from tests.review_support import (
    PASSWORD,
    bodies,
    csrf_of,
    decision,
    eventually,
    finals,
    review_settings,
    sign_in,
    start_review_flow,
    verdict,
    web_app,
)

PEOPLE = {"ann": "analyst", "bob": "analyst", "sue": "senior", "tom": "senior"}
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def running(stack, tmp_path_factory) -> Iterator[tuple[str, object]]:
    """The review flow and the web app on topics of this module's own."""
    work = tmp_path_factory.mktemp("review-web")
    settings = review_settings(stack, rationale_topic=f"rv-rationale-{uuid.uuid4().hex[:8]}")
    flow = start_review_flow(settings, work / "flow")
    try:
        with web_app(settings, work, PEOPLE) as (base, web_settings):
            yield base, web_settings
    finally:
        flow.stop()


def _open_case(settings, base: str, event_id: str, amount: float, earlier: int = 0, **kw) -> str:
    """A new case from a decision (after ``earlier`` approvals on the same card), once the web app shows it."""
    card = f"4{uuid.uuid4().int % 10**15:015d}"
    now = time.time() * 1000.0
    history = [
        decision(f"{event_id}-before-{i}", card, "approve", 20.0 + 15 * i, decided_at_ms=now - (earlier - i) * 3.6e6)
        for i in range(earlier)
    ]
    produce(settings, [*history, decision(event_id, card, "review", amount, **kw)], topic=settings.decisions_topic)
    case_id = _case_of(settings, event_id)
    http = sign_in(base, "tom")
    eventually(lambda: http.get(f"{base}/cases/{case_id}").status_code == 200, what=f"{case_id} on the web app")
    return case_id


def _case_of(settings, event_id: str) -> str:
    def probe():
        for b in bodies(settings, settings.cases_topic):
            if b["transaction"]["event_id"] == event_id:
                return b["case_id"]
        return None

    return eventually(probe, what=f"the case of {event_id}")


def _page_with(http: requests.Session, url: str, text: str) -> str | None:
    page = http.get(url).text
    return page if text in page else None


def _form(html: str, step: int, action: str, note: str) -> dict[str, str]:
    return {"csrf": csrf_of(html), "step": str(step), "action": action, "note": note}


def test_sign_in_sessions_csrf_and_headers(running):
    base, _ = running
    anonymous = requests.get(base + "/")
    assert anonymous.url.endswith("/login") and 'name="csrf"' in anonymous.text
    http = requests.Session()
    token = csrf_of(http.get(base + "/login").text)
    wrong = http.post(base + "/login", data={"csrf": token, "reviewer": "ann", "password": "not-it"})
    assert wrong.status_code == 401 and "wrong password" in wrong.text
    unknown = http.post(base + "/login", data={"csrf": token, "reviewer": "nobody", "password": PASSWORD})
    assert unknown.status_code == 401
    forged = http.post(base + "/login", data={"csrf": "made-up", "reviewer": "ann", "password": PASSWORD})
    assert forged.status_code == 403
    page = http.post(
        base + "/login", data={"csrf": token, "reviewer": "ann", "password": PASSWORD}, allow_redirects=False
    )
    assert page.status_code == 303
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    queue = http.get(base + "/")
    assert "Your queue" in queue.text and "analyst" in queue.text
    assert (
        "script-src 'self'" in queue.headers["content-security-policy"] and queue.headers["x-frame-options"] == "DENY"
    )
    value = http.cookies.get("sluice_review") or ""
    http.cookies.set("sluice_review", value[:-3] + ("AAA" if not value.endswith("AAA") else "BBB"))
    assert http.get(base + "/").url.endswith("/login")  # an altered cookie is no session


def test_an_analyst_cannot_act_on_a_senior_step_even_by_posting_the_form_directly(running):
    base, settings = running
    case_id = _open_case(settings, base, f"web-senior-{uuid.uuid4().hex[:6]}", 2_500.0)
    produce(settings, [verdict(case_id, 0, "bob", "analyst")], topic=settings.verdicts_topic)  # step 1 done
    ann = sign_in(base, "ann")
    page = eventually(lambda: _page_with(ann, f"{base}/cases/{case_id}", "needs senior"), what="step 2 open")
    assert 'id="verdict-form"' not in page and "You cannot act on this case" in page
    hand_made = ann.post(f"{base}/cases/{case_id}/verdict", data=_form(page, 1, "approve", "let me in"))
    assert hand_made.status_code == 403 and "step 2 needs senior or above; analyst is too junior" in hand_made.text
    stale = ann.post(f"{base}/cases/{case_id}/verdict", data=_form(page, 0, "approve", "step one again"))
    assert stale.status_code == 409 and "already filled" in stale.text
    no_token = ann.post(f"{base}/cases/{case_id}/verdict", data={"step": "1", "action": "approve", "note": "x"})
    assert no_token.status_code == 403
    bob = sign_in(base, "bob")  # bob filled step 1; as an analyst he may not act on step 2 either
    assert "You cannot act on this case" in bob.get(f"{base}/cases/{case_id}").text
    time.sleep(1.0)
    sent_by = [v["reviewer"] for v in bodies(settings, settings.verdicts_topic) if v["case_id"] == case_id]
    assert sent_by == ["bob"]  # nothing reached Kafka from ann
    assert case_id in sign_in(base, "sue").get(base + "/").text  # the senior's queue has it


def test_a_verdict_page_learns_the_outcome_from_the_flow_and_shows_a_rationale(running):
    base, settings = running
    event_id = f"web-small-{uuid.uuid4().hex[:6]}"
    rationale = "Three cards used this device in an hour; the amount is 9x the card's usual."
    produce(
        settings,
        [(event_id.encode(), orjson.dumps({"event_id": event_id, "rationale": rationale}))],
        topic=settings.rationale_topic,
    )
    case_id = _open_case(settings, base, event_id, 40.0)
    ann = sign_in(base, "ann")
    page = ann.get(f"{base}/cases/{case_id}").text
    assert rationale.replace("'", "&#39;") in page  # the hook: a model's rationale shown when one exists
    assert "••••" in page and "velocity_burst" in page
    note = "known customer, card 4111  1111  1111  1111"  # the page removes card numbers before Kafka sees them
    sent = ann.post(f"{base}/cases/{case_id}/verdict", data=_form(page, 0, "approve", note), allow_redirects=False)
    assert sent.status_code == 303
    verdict_id = sent.headers["location"].split("verdict=")[1]
    status = _final_status(ann, base, verdict_id)
    assert status["status"] == "accepted" and status["final"]["decision"] == "approve"
    [sent_note] = [v["note"] for v in bodies(settings, settings.verdicts_topic) if v["verdict_id"] == verdict_id]
    assert sent_note == "known customer, card [number removed]"
    assert sign_in(base, "bob").get(f"{base}/api/verdicts/{verdict_id}").status_code == 404  # not bob's verdict


def test_a_verdict_the_flow_refuses_shows_the_flows_reason(running):
    """Two analysts on one case at once: the page lets both through (its view is a moment old), the flow
    takes the first and refuses the second, and the second analyst's page shows why."""
    base, settings = running
    ann, bob = sign_in(base, "ann"), sign_in(base, "bob")
    for _attempt in range(3):
        case_id = _open_case(settings, base, f"web-race-{uuid.uuid4().hex[:6]}", 30.0)
        pages = [http.get(f"{base}/cases/{case_id}").text for http in (ann, bob)]
        first = ann.post(f"{base}/cases/{case_id}/verdict", data=_form(pages[0], 0, "approve", "mine"))
        second = bob.post(
            f"{base}/cases/{case_id}/verdict", data=_form(pages[1], 0, "decline", "no, mine"), allow_redirects=False
        )
        assert first.status_code == 200
        if second.status_code == 303:
            break
        assert second.status_code == 409, second.text  # the page already knew: try again on a new case
    else:
        pytest.fail("the web app always saw the first verdict before the second was sent")
    verdict_id = second.headers["location"].split("verdict=")[1]

    def refused():
        state = bob.get(f"{base}/api/verdicts/{verdict_id}").json()
        return state if state["status"] == "rejected" else None

    state = eventually(refused, what="the flow's refusal on the page")
    assert state["detail"] == "the case is closed: approve (chain)" and state["case_status"] == "closed"
    assert "rejected: the case is closed" in bob.get(f"{base}/cases/{case_id}?verdict={verdict_id}").text


def test_a_final_decision_settles_its_verdicts_even_before_the_case_update_arrives():
    """The board reads case updates and final decisions from two topics; whichever comes first, a page must
    not show the final decision beside its own verdict still pending."""
    board = ReviewBoard()
    verdict = Verdict("v-1", "case-1", 0, "ann", "analyst", "approve", "known customer", 1.0)
    board.submitted(verdict)
    assert board.verdict("v-1").status == "pending"  # type: ignore[union-attr]
    history = [{"kind": "verdict", **verdict_body(verdict), "effect": "closed the case: approve"}]
    board.on_final({"case_id": "case-1", "decision": "approve", "history": history})
    settled = board.verdict("v-1")
    assert settled is not None and (settled.status, settled.detail) == ("accepted", "closed the case: approve")


def _final_status(http: requests.Session, base: str, verdict_id: str) -> dict:
    def probe():
        s = http.get(f"{base}/api/verdicts/{verdict_id}").json()
        return s if s.get("final") else None

    return eventually(probe, what="the final decision behind a verdict")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "SLUICE_REVIEW_SESSION_SECRET must hold at least 32 characters"),
        ({"SLUICE_REVIEW_SESSION_SECRET": "x" * 40}, "SLUICE_REVIEW_CREDENTIALS_FILE is required in production"),
    ],
)
def test_production_mode_refuses_development_defaults_in_one_line(running, env, expected):
    _, settings = running
    base_env = {
        **settings.to_env(),
        "SLUICE_REVIEW_PRODUCTION": "1",
        "SLUICE_REVIEW_SESSION_SECRET": "",
        "SLUICE_REVIEW_CREDENTIALS_FILE": "",
    }
    done = subprocess.run(
        [sys.executable, "-m", "sluice", "review", "serve"],
        env={**os.environ, **base_env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and expected in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


# --- in a real browser ---


@pytest.fixture()
def browser() -> Iterator[object]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: `make browser` installs Debian's chromium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium must never download a driver or a browser
    profile = tempfile.mkdtemp(prefix="sluice-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,1600",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver, name: str, tmp_path: Path) -> None:
    driver.save_screenshot(str(tmp_path / name))
    target = os.environ.get("REVIEW_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(target) / name))


def _sign_in(driver, base: str, reviewer: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(base + "/login")
    driver.find_element(By.ID, "reviewer").send_keys(reviewer)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "sign-in").click()
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, "queue"))


def _approve(driver, base: str, case_id: str, note: str, until: str, screenshot: str | None, tmp_path: Path) -> str:
    """From the queue, open the case, approve it with ``note``; wait until the page's verdict reaches ``until``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.find_element(By.CSS_SELECTOR, f'a.case-link[href="/cases/{case_id}"]').click()
    WebDriverWait(driver, 20).until(lambda d: d.find_elements(By.ID, "verdict-form"))
    if screenshot:
        _shot(driver, screenshot, tmp_path)
    driver.find_element(By.ID, "action-approve").click()
    driver.find_element(By.ID, "note").send_keys(note)
    driver.find_element(By.ID, "submit-verdict").click()
    box = WebDriverWait(driver, 60).until(
        lambda d: (e := d.find_element(By.ID, "verdict-status")).get_attribute("data-state") == until and e
    )
    return str(box.text)


def test_in_a_browser_an_analyst_then_a_senior_approve_and_the_final_decision_is_in_kafka(running, browser, tmp_path):
    from selenium.webdriver.common.by import By

    base, settings = running
    driver = browser
    tag = uuid.uuid4().hex[:6]
    for i, (amount, country) in enumerate([(180.0, "US"), (65.0, "GB"), (420.0, "FR")]):  # the queue's neighbours
        _open_case(settings, base, f"web-other-{tag}-{i}", amount, country=country)
    case_id = _open_case(
        settings, base, f"web-browser-{tag}", 2_750.0, earlier=3, country="NG", rules=("high_risk_country",)
    )

    _sign_in(driver, base, "ann")
    assert case_id in driver.find_element(By.ID, "queue").text
    driver.set_window_size(1280, 560)  # the queue is short: no empty page below it in the docs
    _shot(driver, "queue.png", tmp_path)
    driver.set_window_size(1280, 1600)
    text = _approve(driver, base, case_id, "Holder confirmed the purchase by phone.", "accepted", "case.png", tmp_path)
    assert "accepted (step approved)" in text
    driver.find_element(By.ID, "sign-out").click()

    _sign_in(driver, base, "sue")
    text = _approve(driver, base, case_id, "Second pair of eyes: fine.", "final", None, tmp_path)
    assert "Final decision: approve (by the chain)" in text

    final = eventually(lambda: finals(settings).get(case_id), what="the final decision in Kafka")
    assert len(final) == 1 and final[0]["decision"] == "approve" and final[0]["by"] == "chain"
    assert [(s["reviewer"], s["reviewer_role"]) for s in final[0]["steps"]] == [("ann", "analyst"), ("sue", "senior")]
    assert (tmp_path / "queue.png").stat().st_size > 10_000 and (tmp_path / "case.png").stat().st_size > 10_000


def test_a_malformed_record_on_the_review_topics_is_refused_whole_and_the_queues_keep_working():
    """The cases topic is compacted and read from its start: a snapshot kept half-valid would break every
    reviewer's queue on every start. Each malformed record raises (the feed logs and skips it) and leaves
    the board as it was."""
    from models.review_case import Chain, StepSpec, open_case
    from models.review_wire import Automated, CaseFile, case_body

    board = ReviewBoard()
    chain = Chain("c", "v1", ("analyst", "senior"), (StepSpec("analyst", 600.0),), "hold")
    automated = Automated("review", 0.7, (), "m", (), (), 0.0)
    file = CaseFile("case-1", "e1", "tok_x", "••••0001", 10.0, "US", "grocery", 0, automated, (), "h")
    board.on_case(case_body(open_case("case-1", chain, opened_at_ms=0.0), file, "test", 0.0))
    for bad in (
        {"case_id": "x", "history": [{"kind": "verdict"}]},
        {"case_id": "y", "status": "open"},
        ["case-1"],
        None,
    ):
        handlers = (board.on_case, board.on_final, board.on_rejection)
        for handler in (*handlers, board.on_rationale) if not isinstance(bad, dict) else handlers:
            with pytest.raises((KeyError, TypeError, ValueError)):
                handler(bad)  # type: ignore[arg-type]
        board.on_rationale({"case_id": "x"})  # no event id or text: nothing to show, nothing kept
    queue, count = board.queue("analyst", "ann")
    assert count == 1 and [b["case_id"] for b in queue] == ["case-1"]
    assert board.counts() and board.case("x") is None and board.final("x") is None


def test_parallel_guesses_cannot_pass_the_sign_in_throttle_and_random_ids_cannot_grow_it():
    import threading

    from sluice.review_web.auth import SignInThrottle

    throttle = SignInThrottle(limit=5, window_s=300, lock_s=60, max_ids=100)
    start, allowed = threading.Barrier(40), []

    def guess() -> None:
        start.wait()
        allowed.append(throttle.begin("ann"))

    threads = [threading.Thread(target=guess) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert allowed.count(True) == 5  # each attempt counts before its password is checked
    for n in range(1_000):
        throttle.begin(f"random-{n}")
    kept = throttle._failures
    assert len(kept) == 100 and "random-999" in kept and "ann" not in kept  # the newest kept, the oldest dropped
