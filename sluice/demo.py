"""``make demo``: the fraud flow end to end on a local stack, with a summary.

Starts Tansu + Redis, trains the model if it is missing, loads card profiles,
runs ``python -m bytewax.run dataflows.fraud:flow``, sends a bounded open-loop
stream, reads the decisions back and prints throughput, end-to-end latency
(decision arrival minus producer send time), decision counts and
precision/recall against the generator's labels. Then it stops everything.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import orjson
from confluent_kafka import Producer

from models.fraud_model import load_scorer
from operators.kafka_source import list_partitions
from sluice.collector import BackgroundCollector, read_all
from sluice.flowproc import FlowProcesses
from sluice.generator import TransactionStream, event_records
from sluice.loadgen import send_open_loop
from sluice.profiles import load_profiles
from sluice.settings import REPO_ROOT, Settings
from sluice.stack import default_topics, stack_from_env


def ensure_model(settings: Settings) -> str:
    try:
        return load_scorer(settings.model_path).version
    except FileNotFoundError:
        from models.train_fraud import main as train

        print("no model yet: training one")
        train(["--out", settings.model_path])
        return load_scorer(settings.model_path).version


def wait_until_deciding(settings: Settings, flow: FlowProcesses, timeout_s: float = 120.0) -> None:
    """Send one probe event and wait for its decision: the flow is up and has its partitions."""
    from confluent_kafka import Consumer, TopicPartition

    from models.transaction import Transaction
    from sluice.generator import START_MS, encode

    consumer = Consumer({"bootstrap.servers": settings.brokers, "group.id": "sluice-probe"})
    parts = list_partitions({"bootstrap.servers": settings.brokers}, settings.decisions_topic)
    ends = [consumer.get_watermark_offsets(TopicPartition(settings.decisions_topic, p))[1] for p in parts]
    consumer.assign([TopicPartition(settings.decisions_topic, p, o) for p, o in zip(parts, ends, strict=True)])
    probe_id = f"probe-{time.time_ns()}"
    probe = Transaction(probe_id, "probe", 1.0, "USD", "m-probe", "grocery", "US", START_MS, 0.0)
    producer = Producer(settings.kafka_config())
    producer.produce(settings.transactions_topic, key=b"probe", value=encode(probe, time.time() * 1000))
    producer.flush(10)
    del producer
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if not flow.alive():
                raise RuntimeError("the flow exited during start-up; see the flow logs under .stack/")
            msg = consumer.poll(0.2)
            if (
                msg is not None
                and msg.error() is None
                and orjson.loads(msg.value() or b"{}").get("event_id") == probe_id
            ):
                return
        raise TimeoutError(f"no decision for the probe event within {timeout_s:.0f}s")
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cards", type=int, default=20_000)
    parser.add_argument("--malformed-rate", type=float, default=0.0005)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    args = parser.parse_args(argv)

    stack = stack_from_env()
    print(f"starting local stack: kafka {stack.brokers}, redis {stack.redis_url}")
    stack.start()
    settings = replace(Settings.from_env(), brokers=stack.brokers, redis_url=stack.redis_url)
    stack.create_topics(default_topics(settings))
    flow = FlowProcesses("dataflows.fraud:flow", settings.to_env(), log_dir=REPO_ROOT / ".stack" / "demo-logs")
    try:
        version = ensure_model(settings)
        print(f"model {version}; loaded {load_profiles(settings, args.seed, args.cards)} card profiles")
        flow.start()
        wait_until_deciding(settings, flow)
        records = event_records(TransactionStream(args.seed, n_cards=args.cards), settings, args.malformed_rate)
        collector = BackgroundCollector(
            brokers=settings.brokers,
            topic=settings.decisions_topic,
            expected=args.count,
            timeout_s=args.count / args.rate + 60,
            warmup_s=args.warmup_s,
        )
        producer = Producer(settings.kafka_config(**{"linger.ms": 2, "enable.idempotence": True}))
        print(f"sending {args.count} events at {args.rate:.0f}/s ...")
        sent = send_open_loop(producer, records, args.rate, args.count)
        del producer
        got = collector.result(timeout_s=args.count / args.rate + 120)
        dead = read_all(settings.brokers, settings.dlq_topic)
        fraud_ids = {orjson.loads(m.value())["event_id"] for m in read_all(settings.brokers, settings.labels_topic)}
        summarize(sent, got, dead, fraud_ids, version)
    finally:
        flow.stop()
        stack.stop()
        print("stack stopped")
    return 0


def summarize(sent, got, dead, fraud_ids: set[str], version: str) -> None:  # type: ignore[no-untyped-def]
    flagged = {e for e, d in got.by_event.items() if d != "approve"}
    declined = {e for e, d in got.by_event.items() if d == "decline"}
    span_s = max(1e-9, (got.last_receive - got.first_receive) / 1000)
    lat = got.latency_ms

    def pr(ids: set[str]) -> str:
        tp = len(ids & fraud_ids)
        return f"precision {tp / max(1, len(ids)):.3f} recall {tp / max(1, len(fraud_ids)):.3f}"

    print("\n=== Sluice fraud demo ===")
    print(f"model                 {version}")
    print(f"events sent           {sent.sent} at {sent.rate:.0f}/s (sender lag p99 {sent.lag_p99_ms:.2f} ms)")
    print(f"decisions             {len(got.by_event)} ({got.duplicates} duplicates), dead letters {len(dead)}")
    print(f"throughput            {len(got.by_event) / span_s:.0f} decisions/s")
    print(
        f"end-to-end latency    p50 {lat.get('p50', float('nan')):.1f} ms  p99 {lat.get('p99', float('nan')):.1f} ms"
        f"  max {lat.get('max', float('nan')):.1f} ms  ({lat.get('timed', 0):.0f} timed after warm-up)"
    )
    print("decisions             " + "  ".join(f"{k} {v}" for k, v in sorted(got.decisions.items())))
    print(f"flagged (review+decline) {pr(flagged)}")
    print(f"declined only            {pr(declined)}")
    print(f"fraud events in stream   {len(fraud_ids)}")


if __name__ == "__main__":
    sys.exit(main())
