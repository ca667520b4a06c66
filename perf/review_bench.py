"""Review chains under load: ``python -m perf.review_bench``.

What it measures, on a fresh local stack per run (broker, Redis, the fraud flow) with the `throughput`
broker profile by default:

* **added P99 on the automated decision path**: each run sends the same
  offered rate twice through the fraud flow, first with nothing else running
  (phase A), then with the review flow, the web app and the simulated
  reviewers running (phase B); the figure is B's end-to-end P99 (decision
  arrival minus send time) minus A's, the median over ``--runs`` runs;
* **cases opened per second** in phase B (the realistic review rate: the
  synthetic stream's ``review`` decisions and declines above
  ``SLUICE_REVIEW_DECLINE_ABOVE``);
* **verdict to final decision**, P50/P99: from the start of the HTTP POST of
  the verdict that closes a case to the final decision's arrival on
  ``final-decisions`` (read committed), under ``--reviewers`` concurrent
  simulated reviewers; each signs in, then loops: queue page, a case among the
  five most urgent, a verdict (approve 95%, decline 3%, request info 2%), a
  think time (``--think-s``, +-50%), all through the web app;
* **web page P99**: every request the reviewers make (queue, case, verdict);
* **cases lost / decided twice**: after phase B drains, flagged decisions
  without a case, and cases with more than one final decision.

Reviewers run in a child process (their threads do not share the sender's
GIL). Writes ``perf/reports/review-<date>.json`` (every run, medians and
spreads) and the ``review`` section of ``summary.json`` (``--no-record`` for a
smoke run).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import random
import re
import secrets
import shutil
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import requests
from confluent_kafka import Consumer, Producer, TopicPartition

from models.synthetic_transactions import TransactionStream
from models.train_fraud import ensure_trained
from operators.kafka.admin import create_topics, end_offsets, list_partitions, log, read_all, read_to_end
from perf.bench import _Cpu, _machine
from perf.summary import REPORTS, changed_options, median_and_spread, record_unless, report_stem, why_not_recorded
from sluice.harness.collector import BackgroundCollector, latency_histogram, latency_summary
from sluice.harness.loadgen import send_open_loop
from sluice.local.demo_fraud import wait_until_deciding
from sluice.local.demo_review import wait_http_ready
from sluice.local.profiles import load_profiles
from sluice.local.stack import PROJECT_ROOT, LocalStack
from sluice.local.transactions import PreparedEvent, event_records, sender
from sluice.processes import FlowProcesses, free_port, init_recovery
from sluice.review_web.auth import Reviewers
from sluice.settings import FraudSettings, ReviewSettings

PASSWORD = "bench-password-123"
CASE_LINK = re.compile(r'href="/cases/(case-[0-9a-f]+)"')
STEP_FIELD = re.compile(r'name="step" value="(\d+)"')
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class PhaseResult:
    sent: int = 0
    decided: int = 0
    sender_lag_p99_ms: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)


@dataclass
class RunResult:
    alone: PhaseResult
    with_review: PhaseResult
    added_p99_ms: float = 0.0
    cases_expected: int = 0
    cases_opened: int = 0
    cases_lost: int = 0
    cases_decided_twice: int = 0
    cases_opened_per_s: float = 0.0
    finals: int = 0
    verdicts_posted: int = 0
    verdicts_refused_by_page: int = 0
    verdict_to_final_ms: dict[str, float] = field(default_factory=dict)
    page_ms: dict[str, float] = field(default_factory=dict)
    page_ms_by_kind: dict[str, dict[str, float]] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)


# --- simulated reviewers (child process) ---


def _reviewer(
    base: str, http: requests.Session, rid: str, until: float, think_s: float, out: dict[str, Any], lock: threading.Lock
) -> None:
    """One reviewer's loop until ``until``: queue, a case among the five most urgent, a verdict, a pause."""
    rng = random.Random(rid)
    timings: list[tuple[str, float]] = []
    posted: dict[str, float] = {}
    refused = 0

    def timed(kind: str, method: str, url: str, **kw: Any) -> requests.Response:
        t0 = time.perf_counter()
        resp = http.request(method, url, timeout=30, **kw)
        timings.append((kind, (time.perf_counter() - t0) * 1000.0))
        return resp

    while time.time() < until:
        queue = timed("queue", "GET", base + "/")
        cases = CASE_LINK.findall(queue.text)
        if cases:
            case_id = rng.choice(cases[:5])
            page = timed("case", "GET", f"{base}/cases/{case_id}").text
            step, csrf = STEP_FIELD.search(page), CSRF_FIELD.search(page)
            if step and csrf:
                action = rng.choices(["approve", "decline", "request_info"], [95, 3, 2])[0]
                form = {"csrf": csrf.group(1), "step": step.group(1), "action": action, "note": f"bench {rid}"}
                started = time.time() * 1000.0
                resp = timed("verdict", "POST", f"{base}/cases/{case_id}/verdict", data=form, allow_redirects=False)
                if resp.status_code == 303:
                    posted[resp.headers["location"].split("verdict=")[1]] = started
                else:
                    refused += 1
        time.sleep(think_s * rng.uniform(0.5, 1.5))
    with lock:
        out["timings"].extend(timings)
        out["posted"].update(posted)
        out["refused"] += refused


def _sign_in(base: str, rid: str) -> requests.Session:
    http = requests.Session()
    token = CSRF_FIELD.search(http.get(base + "/login").text)
    assert token is not None
    resp = http.post(base + "/login", data={"csrf": token.group(1), "reviewer": rid, "password": PASSWORD})
    if resp.status_code != 200:
        raise RuntimeError(f"reviewer {rid} could not sign in: {resp.status_code}")
    return http


def _finals(brokers: str, topic: str, stop: threading.Event, arrivals: dict[str, tuple[float, str]]) -> None:
    """Arrival time and closing verdict of every final decision (read committed)."""
    from operators.kafka.connection import KafkaConnection

    conn = KafkaConnection(brokers)
    consumer = Consumer(
        conn.consumer_config(**{"group.id": "bench-finals", "isolation.level": "read_committed", "logger": log})
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in list_partitions(conn, topic)])
    while not stop.is_set():
        for msg in consumer.consume(500, 0.05):
            if msg.error() is not None:
                continue
            now = time.time() * 1000.0
            body = orjson.loads(msg.value() or b"{}")
            filled = [s["verdict_id"] for s in body["steps"] if s["verdict_id"]]
            if filled and body["case_id"] not in arrivals:
                arrivals[body["case_id"]] = (now, filled[-1])
    consumer.close()


def run_reviewers(
    queue: mp.Queue[Any], base: str, ids: list[str], seconds: float, think_s: float, brokers: str, finals_topic: str
) -> None:
    """Child process: sign everyone in, say ready, wait for "go", review for ``seconds``, report."""
    sessions = {rid: _sign_in(base, rid) for rid in ids}
    stop = threading.Event()
    arrivals: dict[str, tuple[float, str]] = {}
    finals = threading.Thread(target=_finals, args=(brokers, finals_topic, stop, arrivals), daemon=True)
    finals.start()
    queue.put("ready")
    assert queue.get() == "go"
    until = time.time() + seconds
    out: dict[str, Any] = {"timings": [], "posted": {}, "refused": 0}
    lock = threading.Lock()
    threads = []
    for rid in ids:
        t = threading.Thread(target=_reviewer, args=(base, sessions[rid], rid, until, think_s, out, lock))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    time.sleep(5.0)  # the last verdicts' epoch commits, their finals arrive
    stop.set()
    finals.join(5)
    queue.put({**out, "arrivals": arrivals})


# --- phases ---


def measure_decisions(fraud: FraudSettings, events: list[PreparedEvent], rate: float, warmup_s: float) -> PhaseResult:
    """Send ``events`` at ``rate`` and time their decisions end to end."""
    count = len(events)
    collector = BackgroundCollector(
        connection=fraud.connection(),
        topic=fraud.decisions_topic,
        expected=count,
        timeout_s=count / rate + 60,
        warmup_s=warmup_s,
        idle_stop_s=15.0,
        start_offsets=end_offsets(fraud.connection(), fraud.decisions_topic),
    )
    sent = send_open_loop(sender(fraud), iter(events), rate, count)
    got = collector.result(timeout_s=count / rate + 120)
    return PhaseResult(
        sent.sent, len(got.by_event), round(sent.lag_p99_ms, 3), {k: round(v, 2) for k, v in got.latency_ms.items()}
    )


def _review_ready(review: ReviewSettings, flow: FlowProcesses, timeout_s: float = 120.0) -> None:
    """Send probe decisions (every 2 s: the flow starts at the decisions' end, so an early probe is never
    read) until the flow opens a case for one: it is up and reading."""
    producer = Producer(review.connection().producer_config(logger=log))
    deadline = time.monotonic() + timeout_s
    probes: list[bytes] = []
    while time.monotonic() < deadline:
        if not flow.alive():
            raise RuntimeError("the review flow exited during start-up; see its log")
        now = time.time() * 1000.0
        probe = f"probe-review-{time.time_ns()}"
        body = {
            "event_id": probe, "card_id": "probe", "decision": "review", "score": 0.6, "rules": [],
            "model_version": "probe", "flags": [], "features": {}, "event_time": int(now), "sent_at": now,
            "decided_at": now, "amount": 1.0, "country": "US", "merchant_category": "grocery",
        }  # fmt: skip
        producer.produce(review.decisions_topic, key=b"probe", value=orjson.dumps(body))
        producer.flush(10)
        probes.append(probe.encode())
        time.sleep(2.0)
        cases = [m.value() or b"" for m in read_all(review.connection(), review.cases_topic)]
        if any(p in value for p in probes for value in cases):
            return
    raise TimeoutError("the review flow did not open a probe case")


def _flagged(value: bytes | None, threshold: float) -> str | None:
    d = orjson.loads(value or b"{}")
    if d["event_id"].startswith("probe-"):
        return None
    needs = d["decision"] == "review" or (d["decision"] == "decline" and d.get("amount", 0.0) >= threshold)
    return d["event_id"] if needs else None


def account_cases(review: ReviewSettings, starts: dict[int, int], drain_s: float = 60.0) -> tuple[int, int, int, int]:
    """Flagged decisions since ``starts``, cases opened for them, lost, and cases decided twice (after a drain)."""
    conn = review.connection()
    msgs, _ = read_to_end(conn, review.decisions_topic, starts)
    expected = {e for m in msgs if (e := _flagged(m.value(), review.review_decline_above))}
    deadline = time.monotonic() + drain_s
    while True:
        opened = {
            b["transaction"]["event_id"]
            for b in (orjson.loads(m.value() or b"{}") for m in read_all(conn, review.cases_topic))
            if b["event"] == "opened"
        }
        if expected <= opened or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    per_case: dict[str, int] = {}
    for m in read_all(conn, review.final_decisions_topic):
        case_id = orjson.loads(m.value() or b"{}")["case_id"]
        per_case[case_id] = per_case.get(case_id, 0) + 1
    return len(expected), len(expected & opened), len(expected - opened), sum(1 for n in per_case.values() if n > 1)


def _percentiles(values: list[float]) -> dict[str, float]:
    hist = latency_histogram()
    for v in values:
        hist.record_value(max(1, int(v * 1000)))
    return {k: round(v, 2) for k, v in latency_summary(hist).items()}


def one_run(
    stack: LocalStack, fraud: FraudSettings, fraud_flow: FlowProcesses, stream: Any, args: argparse.Namespace, n: int
) -> RunResult:
    count = int(args.rate * (args.seconds + args.warmup))
    events = list(itertools.islice(stream, count))  # encoded before the clock starts
    alone = measure_decisions(fraud, events, args.rate, args.warmup)
    print(
        f"run {n}: fraud flow alone  p50 {alone.latency_ms.get('p50')} p99 {alone.latency_ms.get('p99')} ms", flush=True
    )

    work = args.logs / f"run-{n}"
    shutil.rmtree(work, ignore_errors=True)
    tag = uuid.uuid4().hex[:6]
    review = replace(
        ReviewSettings(),
        brokers=stack.brokers,
        decisions_topic=fraud.decisions_topic,
        rationale_topic=fraud.rationales_topic,
        decisions_start_from="latest",
        broker_profile=fraud.broker_profile,
        topic_partitions=fraud.topic_partitions,
        review_token_key=secrets.token_urlsafe(32),
        review_session_secret=secrets.token_urlsafe(32),
        review_credentials_file=str(args.logs / "reviewers.json"),
        review_port=free_port(),
    ).with_own_topics(f"run{n}-{tag}")
    create_topics(review.connection(), review.topics())
    starts = end_offsets(review.connection(), review.decisions_topic)
    init_recovery(work / "recovery")
    flow = FlowProcesses(
        "dataflows.review:from_env()", review.to_env(), log_dir=work / "review", recovery_dir=work / "recovery"
    ).start()
    web = FlowProcesses(
        "", review.to_env(), log_dir=work / "web", program=[sys.executable, "-m", "sluice", "review", "serve"]
    ).start()
    ctx = mp.get_context("spawn")
    queue: mp.Queue[Any] = ctx.Queue()
    try:
        _review_ready(review, flow)
        base = f"http://127.0.0.1:{review.review_port}"
        wait_http_ready(base + "/healthz", web)
        ids = list(args.reviewer_ids)
        child = ctx.Process(
            target=run_reviewers,
            args=(
                queue,
                base,
                ids,
                args.seconds + args.warmup,
                args.think_s,
                stack.brokers,
                review.final_decisions_topic,
            ),
            daemon=True,
        )
        child.start()
        if queue.get(timeout=120) != "ready":
            raise RuntimeError("the reviewers could not start")
        cpu = _Cpu(
            {
                "fraud_flow": fraud_flow.pids,
                "review_flow": flow.pids,
                "web_app": web.pids,
                "broker": [stack.procs["tansu"].pid],
            }
        )
        queue.put("go")
        b_events = list(itertools.islice(stream, count))
        with_review = measure_decisions(fraud, b_events, args.rate, args.warmup)
        reviewers = queue.get(timeout=args.seconds + args.warmup + 120)
        child.join(10)
        cpu_s = cpu.stop()
        expected, opened, lost, twice = account_cases(review, starts)
    finally:
        web.stop()
        flow.stop()
    result = RunResult(alone, with_review, cpu_s=cpu_s)
    result.added_p99_ms = round(with_review.latency_ms.get("p99", 0.0) - alone.latency_ms.get("p99", 0.0), 2)
    result.cases_expected, result.cases_opened, result.cases_lost, result.cases_decided_twice = (
        expected,
        opened,
        lost,
        twice,
    )
    result.cases_opened_per_s = round(opened / (args.seconds + args.warmup), 2)
    posted: dict[str, float] = reviewers["posted"]
    arrivals: dict[str, tuple[float, str]] = reviewers["arrivals"]
    closing = [at - posted[vid] for at, vid in arrivals.values() if vid in posted]
    result.finals, result.verdicts_posted, result.verdicts_refused_by_page = (
        len(arrivals),
        len(posted),
        reviewers["refused"],
    )
    result.verdict_to_final_ms = _percentiles(closing)
    timings: list[tuple[str, float]] = reviewers["timings"]
    result.page_ms = _percentiles([ms for _, ms in timings])
    result.page_ms_by_kind = {
        k: _percentiles([ms for kind, ms in timings if kind == k]) for k in ("queue", "case", "verdict")
    }
    print(
        f"run {n}: with review     p50 {with_review.latency_ms.get('p50')} p99 {with_review.latency_ms.get('p99')} ms "
        f"(added p99 {result.added_p99_ms} ms); cases {opened}/{expected} opened ({result.cases_opened_per_s}/s), "
        f"lost {lost}, decided twice {twice}; verdicts {len(posted)} ({result.verdicts_refused_by_page} refused by the "
        f"page), finals {len(arrivals)}; verdict->final p50 {result.verdict_to_final_ms.get('p50')} p99 "
        f"{result.verdict_to_final_ms.get('p99')} ms; page p99 {result.page_ms.get('p99')} ms; cpu {cpu_s}",
        flush=True,
    )
    return result


def write_reviewers(path: Path, count: int) -> list[str]:
    """``count`` reviewers: 60% analysts, the rest seniors (one in ten of them heads); all with PASSWORD."""
    reviewers = Reviewers()
    ids = []
    for i in range(count):
        role = "analyst" if i % 10 < 6 else ("head" if i % 10 == 9 else "senior")
        reviewers.add(f"{role}-{i}", role, PASSWORD)
        ids.append(f"{role}-{i}")
    reviewers.save(path)
    return ids


# the recorded configuration (10,000/s does not fit this box with both flows and 50 reviewers on it)
RATE, SECONDS, REVIEWERS = 5_000.0, 20.0, 50
TIMED = (
    "added_p99_ms_decision_path", "decision_path_p99_ms_alone", "decision_path_p99_ms_with_review",
    "verdict_to_final_p50_ms", "verdict_to_final_p99_ms", "page_p99_ms", "cases_opened_per_s",
)  # fmt: skip


def summarize(runs: list[RunResult]) -> dict[str, Any]:
    """Medians and spreads over the runs. A run that timed nothing for a figure (no decisions timed, no final
    decision arrived) is left out of that figure, never counted as 0 ms; ``<figure>_runs`` says how many
    runs it is the median of, and a figure no run measured is absent."""

    def figure(values: list[float | None]) -> dict[str, float] | None:
        measured = [v for v in values if v is not None]
        if not measured:
            return None
        med, low, high = median_and_spread(measured)
        return {"median": round(med, 2), "min": round(low, 2), "max": round(high, 2), "runs": len(measured)}

    figures = {
        "added_p99_ms_decision_path": figure(
            [r.added_p99_ms if r.alone.latency_ms and r.with_review.latency_ms else None for r in runs]
        ),
        "decision_path_p99_ms_alone": figure([r.alone.latency_ms.get("p99") for r in runs]),
        "decision_path_p99_ms_with_review": figure([r.with_review.latency_ms.get("p99") for r in runs]),
        "verdict_to_final_p50_ms": figure([r.verdict_to_final_ms.get("p50") for r in runs]),
        "verdict_to_final_p99_ms": figure([r.verdict_to_final_ms.get("p99") for r in runs]),
        "page_p99_ms": figure([r.page_ms.get("p99") for r in runs]),
        "cases_opened_per_s": figure([r.cases_opened_per_s for r in runs]),
    }
    return {k: v for k, v in figures.items() if v is not None} | {
        "cases_lost": sum(r.cases_lost for r in runs),
        "cases_decided_twice": sum(r.cases_decided_twice for r in runs),
    }


def fresh_run(base: FraudSettings, args: argparse.Namespace, n: int) -> RunResult:
    """One run on a stack of its own: a broker that carried earlier runs' records is slower (Tansu's cost grows
    with what it stores), and a flow that stalled in an earlier run cannot spoil this one."""
    shutil.rmtree(args.logs / f"stack-{n}", ignore_errors=True)
    stack = LocalStack(free_port(), free_port(), args.logs / f"stack-{n}")
    stack.topics = base.topics()
    stack.start()
    fraud = replace(base, brokers=stack.brokers, redis_url=stack.redis_url)
    fraud_flow = FlowProcesses("dataflows.fraud:from_env()", fraud.to_env(), log_dir=args.logs / f"fraud-{n}")
    try:
        load_profiles(fraud, seed=11, n_cards=20_000)
        fraud_flow.start()
        wait_until_deciding(fraud, fraud_flow)
        stream = event_records(TransactionStream(11, n_cards=20_000), fraud)  # the same events every run
        return one_run(stack, fraud, fraud_flow, stream, args, n)
    finally:
        fraud_flow.stop()
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=RATE, help="transactions per second, open-loop")
    parser.add_argument("--seconds", type=float, default=SECONDS, help="measured seconds per phase (after warm-up)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds sent first and not timed")
    parser.add_argument("--reviewers", type=int, default=REVIEWERS, help="concurrent simulated reviewers")
    parser.add_argument("--think-s", type=float, default=1.0, help="mean pause between a reviewer's verdicts")
    parser.add_argument("--runs", type=int, default=3, help="runs (each: fraud alone, then with review)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument(
        "--profile", default="throughput", help="broker profile of every client (latency, throughput, kafka)"
    )
    parser.add_argument("--out", type=Path, default=REPORTS)
    parser.add_argument("--no-record", action="store_true", help="smoke run: leave summary.json alone")
    args = parser.parse_args(argv)
    args.logs = PROJECT_ROOT / ".stack" / "bench" / "review"
    args.logs.mkdir(parents=True, exist_ok=True)
    args.reviewer_ids = write_reviewers(args.logs / "reviewers.json", args.reviewers)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    base = replace(FraudSettings.from_env(), topic_partitions=args.partitions, broker_profile=args.profile)
    ensure_trained(base.model_path)
    runs = [fresh_run(base, args, n) for n in range(args.runs)]
    summary = summarize(runs)
    report = {
        "benchmark": "review",
        "started": started,
        "machine": _machine(),
        "command": "python -m perf.review_bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {k: v for k, v in vars(args).items() if k not in ("logs", "reviewer_ids", "out")},
        "summary": summary,
        "runs": [asdict(r) for r in runs],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = report_stem("review", folder=args.out).with_suffix(".json")
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"report: {path}")
    print(json.dumps(summary, indent=1))
    figures = {k: v["median"] if isinstance(v, dict) else v for k, v in summary.items()}
    figures |= {f"{k}_{end}": v[end] for k, v in summary.items() if isinstance(v, dict) for end in ("min", "max")}
    smoke = changed_options(parser, args, "rate", "seconds", "reviewers")
    runs_each = min((v["runs"] for v in summary.values() if isinstance(v, dict)), default=0)
    reason = why_not_recorded(runs_each, no_record=args.no_record, smoke=smoke)
    record_unless(reason, "review", figures, owns=[f"{k}{e}" for k in TIMED for e in ("", "_min", "_max")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
