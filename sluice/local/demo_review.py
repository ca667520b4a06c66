"""``sluice demo review`` (``make review-demo``): review chains end to end on a local stack, in a browser.

Starts Tansu + Redis, trains the fraud model if it is missing, loads card
profiles, writes reviewers' credentials with fresh random passwords, publishes a
demo policy (the built-in chains with a short SLA, so escalations show up),
starts the fraud flow, the review flow (recoverable) and the reviewer web app,
sends synthetic transactions open-loop, and prints the URL and the sign-ins.
Runs until Ctrl-C (or ``--seconds``), then stops everything.
"""

from __future__ import annotations

import argparse
import copy
import secrets
import shutil
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

from models.review_policy import DEFAULT_POLICY
from models.synthetic_transactions import TransactionStream
from models.train_fraud import ensure_trained
from operators.kafka.admin import read_all
from sluice.harness.loadgen import send_open_loop
from sluice.local.demo_fraud import wait_until_deciding
from sluice.local.profiles import load_profiles
from sluice.local.stack import PROJECT_ROOT, stack_from_env
from sluice.local.transactions import event_records, sender
from sluice.processes import FlowProcesses, init_recovery
from sluice.review_web.auth import Reviewers
from sluice.settings import FraudSettings, ReviewSettings

WORK = PROJECT_ROOT / ".stack" / "review-demo"
DEMO_REVIEWERS = (
    ("analyst1", "analyst"),
    ("analyst2", "analyst"),
    ("senior1", "senior"),
    ("senior2", "senior"),
    ("head1", "head"),
)


def write_reviewers(path: Path) -> dict[str, tuple[str, str]]:
    """A credentials file of demo reviewers with random passwords; ``{id: (role, password)}``."""
    reviewers = Reviewers()
    logins = {}
    for rid, role in DEMO_REVIEWERS:
        password = secrets.token_urlsafe(9)
        reviewers.add(rid, role, password)
        logins[rid] = (role, password)
    reviewers.save(path)
    return logins


def demo_policy(sla_s: float) -> dict[str, Any]:
    """The built-in chains with every SLA set to ``sla_s``."""
    policy = copy.deepcopy(DEFAULT_POLICY)
    policy["version"] = f"demo-sla-{sla_s:g}s"
    policy["description"] = f"the built-in chains, every step due within {sla_s:g} s (demo)"
    for chain in policy["chains"]:
        for step in chain["steps"]:
            step["sla_s"] = sla_s
    return policy


def wait_http_ready(url: str, alive: FlowProcesses, timeout_s: float = 60.0) -> None:
    """Wait until ``url`` (``/healthz``) says the web app has caught up with Kafka."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive.alive():
            raise RuntimeError("the web app exited; see its log")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - our own local URL
                if orjson.loads(resp.read()).get("ready"):
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not report ready within {timeout_s:.0f}s")


def run(args: argparse.Namespace) -> int:
    stack = stack_from_env()
    print(f"starting local stack: kafka {stack.brokers}, redis {stack.redis_url}")
    stack.start()
    started: list[FlowProcesses] = []
    try:
        WORK.mkdir(parents=True, exist_ok=True)
        fraud = replace(FraudSettings.from_env(), brokers=stack.brokers, redis_url=stack.redis_url)
        review = replace(
            ReviewSettings.from_env(),
            brokers=stack.brokers,
            redis_url=stack.redis_url,
            review_port=args.port,
            review_credentials_file=str(WORK / "reviewers.json"),
            review_session_secret=secrets.token_urlsafe(32),
            review_token_key=secrets.token_urlsafe(32),
            decisions_start_from="latest",
        )
        stack.create_topics(fraud.topics() | review.topics())
        logins = write_reviewers(WORK / "reviewers.json")
        recovery = WORK / "recovery"
        shutil.rmtree(recovery, ignore_errors=True)  # the demo's broker starts empty: an old checkpoint means nothing
        init_recovery(recovery)
        logs = WORK / "logs"
        flows = [
            FlowProcesses("dataflows.fraud:from_env()", fraud.to_env(), log_dir=logs / "fraud"),
            FlowProcesses(
                "dataflows.review:from_env()", review.to_env(), log_dir=logs / "review", recovery_dir=recovery
            ),
        ]
        web = FlowProcesses(
            "", review.to_env(), log_dir=logs / "web", program=[sys.executable, "-m", "sluice", "review", "serve"]
        )
        started = [web, *flows]
        version = ensure_trained(fraud.model_path)
        print(f"model {version}; loaded {load_profiles(fraud, 7, 20_000)} card profiles")
        policy = demo_policy(args.sla_s)
        _publish_policy(review, policy)
        for flow in [*flows, web]:
            flow.start()
        wait_until_deciding(fraud, flows[0])
        url = f"http://{review.review_host}:{review.review_port}/"
        wait_http_ready(url + "healthz", web)
        print(f"\n=== Sluice review chains ===\nopen {url} and sign in as:")
        for rid, (role, password) in logins.items():
            print(f"  {rid:10s} {role:8s} password {password}")
        print(f"policy {policy['version']}: chains {', '.join(c['name'] for c in policy['chains'])}")
        print(f"sending transactions at {args.rate:.0f}/s; Ctrl-C stops everything\n")
        _traffic(fraud, review, args)
    except KeyboardInterrupt:
        pass
    finally:
        for flow in started:
            flow.stop()
        stack.stop()
        print("\nstack stopped")
    return 0


def _publish_policy(review: ReviewSettings, policy: dict[str, Any]) -> None:
    """Publish the demo's policy with a producer of its own: one kept for the demo's lifetime would
    still be connected when the stack stops, and librdkafka would log "connection refused" at exit."""
    producer = Producer(review.connection().producer_config())
    producer.produce(review.policies_topic, key=b"policy", value=orjson.dumps(policy))
    producer.flush(10)


def _traffic(fraud: FraudSettings, review: ReviewSettings, args: argparse.Namespace) -> None:
    """Send in 10-second slices, reporting the cases opened and decided so far."""
    records = event_records(TransactionStream(7, n_cards=20_000), fraud)  # the cards whose profiles are loaded
    producer = sender(fraud)
    started = time.monotonic()
    while args.seconds <= 0 or time.monotonic() - started < args.seconds:
        send_open_loop(producer, records, args.rate, int(args.rate * 10))
        opened = sum(
            1 for m in read_all(review.connection(), review.cases_topic) if b'"event":"opened"' in (m.value() or b"")
        )
        final = len(read_all(review.connection(), review.final_decisions_topic))
        print(f"{time.monotonic() - started:6.0f}s  cases opened {opened}, decided {final}", flush=True)
