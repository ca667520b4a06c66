"""``sluice demo fraud`` (``make demo``): the fraud flow end to end on a local stack, with a summary.

Starts Tansu + Redis, trains the model if it is missing, loads card profiles,
runs ``python -m bytewax.run "dataflows.fraud:from_env()"``, sends a bounded
open-loop stream, reads the decisions back and prints throughput, end-to-end
latency (decision arrival minus producer send time), decision counts and
precision/recall against the generator's labels. Then it stops everything.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import orjson

from models.synthetic_transactions import START_MS, TransactionStream
from models.train_fraud import ensure_trained
from models.transaction import Transaction
from operators.kafka.admin import read_all
from operators.kafka.records import KafkaRecord
from sluice.harness.collector import BackgroundCollector, Collected
from sluice.harness.loadgen import SendReport, send_open_loop
from sluice.harness.probe import wait_for_answer
from sluice.local.profiles import load_profiles
from sluice.local.stack import PROJECT_ROOT, stack_from_env
from sluice.local.transactions import event_records, sender
from sluice.processes import FlowProcesses
from sluice.settings import FraudSettings

FLOW = "dataflows.fraud:from_env()"


def wait_until_deciding(settings: FraudSettings, flow: FlowProcesses, timeout_s: float = 120.0) -> float:
    """Send one probe transaction and wait for its decision: the flow is up and has its partitions."""
    probe_id = f"probe-{time.time_ns()}"
    txn = Transaction(probe_id, "probe", 1.0, "USD", "m-probe", "grocery", "US", START_MS, 0.0)
    probe = KafkaRecord(settings.transactions_topic, b"probe", txn.to_json(sent_at_ms=time.time() * 1000))
    return wait_for_answer(
        settings.connection(),
        probe,
        settings.decisions_topic,
        lambda body: body.get("event_id") == probe_id,
        flow.alive,
        timeout_s,
    )


def run(args: argparse.Namespace) -> int:
    stack = stack_from_env()
    print(f"starting local stack: kafka {stack.brokers}, redis {stack.redis_url}")
    stack.start()
    settings = replace(
        FraudSettings.from_env(),
        brokers=stack.brokers,
        redis_url=stack.redis_url,
        # the local broker is Tansu, whose cost is per fetch x stored batches: at the demo's 10,000/s the
        # default `latency` profile lets it take the core the flow needs (p50 3-5 s on a 2-core box, the flow
        # falls behind); `throughput` keeps up (p50 ~170 ms). SLUICE_BROKER_PROFILE still wins when set.
        broker_profile=os.environ.get("SLUICE_BROKER_PROFILE", "throughput"),
    )
    print(f"broker profile {settings.broker_profile} (SLUICE_BROKER_PROFILE)")
    stack.create_topics(settings.topics())
    flow = FlowProcesses(FLOW, settings.to_env(), log_dir=PROJECT_ROOT / ".stack" / "demo-logs")
    try:
        version = ensure_trained(settings.model_path)
        print(f"model {version}; loaded {load_profiles(settings, args.seed, args.cards)} card profiles")
        flow.start()
        print(f"flow answering after {wait_until_deciding(settings, flow):.1f}s")
        stream = TransactionStream(args.seed, n_cards=args.cards)
        records = event_records(stream, settings, args.malformed_rate, args.label_delay_s)
        collector = BackgroundCollector(
            connection=settings.connection(),
            topic=settings.decisions_topic,
            expected=args.count,
            timeout_s=args.count / args.rate + 60,
            warmup_s=args.warmup_s,
        )
        print(f"sending {args.count} events at {args.rate:.0f}/s ...")
        sent = send_open_loop(sender(settings), records, args.rate, args.count, progress=None)
        got = collector.result(timeout_s=args.count / args.rate + 120)
        dead = read_all(settings.connection(), settings.dlq_topic)
        labels = read_all(settings.connection(), settings.labels_topic)
        summarize(sent, got, len(dead), {orjson.loads(m.value() or b"{}")["event_id"] for m in labels}, version)
    finally:
        flow.stop()
        stack.stop()
        print("stack stopped")
    return 0


def precision_recall(chosen: set[str], fraud_ids: set[str]) -> str:
    """How many of the ``chosen`` events are fraud (precision) and how many fraud events were chosen (recall).

    >>> precision_recall({"a", "b", "c", "d"}, {"a", "b", "x"})
    'precision 0.500 recall 0.667'
    >>> precision_recall(set(), set())  # nothing flagged, no fraud: zeros, not a division by zero
    'precision 0.000 recall 0.000'
    """
    tp = len(chosen & fraud_ids)
    return f"precision {tp / max(1, len(chosen)):.3f} recall {tp / max(1, len(fraud_ids)):.3f}"


def summarize(sent: SendReport, got: Collected, dead: int, fraud_ids: set[str], version: str) -> None:
    flagged = {e for e, d in got.by_event.items() if d != "approve"}
    declined = {e for e, d in got.by_event.items() if d == "decline"}
    span_s = max(1e-9, (got.last_receive - got.first_receive) / 1000)
    lat = got.latency_ms

    print("\n=== Sluice fraud demo ===")
    print(f"model                 {version}")
    print(f"events sent           {sent.sent} at {sent.rate:.0f}/s (sender lag p99 {sent.lag_p99_ms:.2f} ms)")
    print(f"decisions             {len(got.by_event)} ({got.duplicates} duplicates), dead letters {dead}")
    print(f"throughput            {len(got.by_event) / span_s:.0f} decisions/s")
    print(
        f"end-to-end latency    p50 {lat.get('p50', float('nan')):.1f} ms  p99 {lat.get('p99', float('nan')):.1f} ms"
        f"  max {lat.get('max', float('nan')):.1f} ms  ({lat.get('timed', 0):.0f} timed after warm-up)"
    )
    print("decisions             " + "  ".join(f"{k} {v}" for k, v in sorted(got.decisions.items())))
    print(f"flagged (review+decline) {precision_recall(flagged, fraud_ids)}")
    print(f"declined only            {precision_recall(declined, fraud_ids)}")
    print(f"fraud events in stream   {len(fraud_ids)}")
