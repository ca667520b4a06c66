"""Conversational load on the assistant flow: 1,500 concurrent sessions, open loop, real broker.

    python -m perf.assistant_bench retrieval --runs 3   # (a) extractive answers (the CPU default), 1,500 sessions
    python -m perf.assistant_bench generation           # (b) with SmolLM2 rewrites, planned to the deadline
    python -m perf.assistant_bench burst                # 200 questions at the same instant
    python -m perf.assistant_bench batching             # generation tokens/s by batch size (no flow)
    python -m perf.assistant_bench freshness            # new document -> searchable, on a live index

Each session sends turns separated by exponential think time (75% knowledge
questions written the way users ask, from ``perf/assistant_eval.json``, with
follow-ups, 15% small talk, 10% requests for a human), on a schedule fixed in
advance (open loop: a slow flow does not slow the senders). A consumer in its own
process records when each answer arrives. Per-stage figures come from each
response's ``latency_ms``; end to end is arrival minus send time. Reports go to
``perf/reports/``; a latency figure in ``summary.json`` is the median of the runs.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
from confluent_kafka import Consumer, Producer, TopicPartition

from models.chat import ChatRequest
from operators.kafka.admin import list_partitions
from operators.kafka.connection import KafkaConnection
from perf.summary import REPORTS, median_and_spread, record
from sluice.local.corpus import load_corpus, publish
from sluice.local.demo_assistant import FLOW, wait_indexed
from sluice.local.stack import PROJECT_ROOT, LocalStack
from sluice.processes import FlowProcesses, free_port
from sluice.settings import AssistantSettings

FOLLOW_UPS = ["and what about its exceptions?", "can you give an example of that?", "why is it designed like that?"]
SMALL_TALK = ["hi there!", "thanks a lot", "goodbye"]
HANDOFF = ["I want to talk to a real person", "this is urgent, escalate this to a human now"]

Turn = tuple[float, str, int, str]  # due second, session, turn number, text
EVAL_QUESTIONS = Path(__file__).resolve().parent / "assistant_eval.json"


def user_questions() -> list[str]:
    """The evaluation set's stand-alone questions (follow-ups are added by the schedule)."""
    return [q["question"] for q in orjson.loads(EVAL_QUESTIONS.read_bytes()) if not q["conversation"]]


def schedule(sessions: int, think_s: float, duration_s: float, seed: int = 1) -> list[Turn]:
    """Every session's turns over ``duration_s``: first turn uniform in the first think time, then exponential gaps."""
    rng = np.random.default_rng(seed)
    questions = user_questions()
    out: list[Turn] = []
    for s in range(sessions):
        t, n, last_knowledge = rng.uniform(0, think_s), 0, False
        while t < duration_s:
            r = rng.random()
            if last_knowledge and r < 0.3:
                text = FOLLOW_UPS[rng.integers(len(FOLLOW_UPS))]
            elif r < 0.75:
                text, last_knowledge = questions[rng.integers(len(questions))], True
            elif r < 0.9:
                text, last_knowledge = SMALL_TALK[rng.integers(len(SMALL_TALK))], False
            else:
                text, last_knowledge = HANDOFF[rng.integers(len(HANDOFF))], False
            out.append((t, f"session-{s}", n, text))
            n += 1
            t += rng.exponential(think_s)
    return sorted(out)


def send(settings: AssistantSettings, turns: list[Turn]) -> dict[str, float]:
    """Produce each turn at its due time; returns the sender's lag percentiles (ms)."""
    producer = Producer(settings.connection().producer_config())
    lags = []
    start = time.time()
    for due, session, n, text in turns:
        wait = start + due - time.time()
        if wait > 0:
            time.sleep(wait)
        now = time.time()
        lags.append((now - start - due) * 1000.0)
        producer.produce(
            settings.requests_topic,
            key=session.encode(),
            value=ChatRequest(session, str(n), text, now * 1000.0).to_json(),
        )
        producer.poll(0)
    producer.flush(30)
    return {"p50": float(np.percentile(lags, 50)), "p99": float(np.percentile(lags, 99)), "max": float(np.max(lags))}


def _consume(conn: KafkaConnection, topics: list[str], expected: int, timeout_s: float, ready: Any, out: Any) -> None:
    consumer = Consumer(conn.consumer_config(**{"group.id": "bench", "enable.auto.commit": False}))
    parts = [TopicPartition(t, p, 0) for t in topics for p in list_partitions(conn, t)]
    consumer.assign(parts)
    consumer.poll(0.5)
    ready.set()
    seen: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}
    deadline = time.monotonic() + timeout_s
    while len(seen) < expected and time.monotonic() < deadline:
        msg = consumer.poll(0.1)
        if msg is None or msg.error() is not None:
            continue
        body = orjson.loads(msg.value() or b"{}")
        seen.setdefault((body["session_id"], body["turn_id"]), (time.time() * 1000.0, body))
    consumer.close()
    out.put(list(seen.values()))


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each named process."""
    out = {}
    for name, pid in pids.items():
        t = psutil.Process(pid).cpu_times()
        out[name] = t.user + t.system
    return out


def _pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values)
    return {
        "n": len(a),
        "p50": round(float(np.percentile(a, 50)), 2),
        "p99": round(float(np.percentile(a, 99)), 2),
        "max": round(float(a.max()), 2),
    }


@contextlib.contextmanager
def indexed_flow(settings: AssistantSettings) -> Iterator[tuple[AssistantSettings, FlowProcesses, LocalStack, float]]:
    """A fresh stack with the assistant flow running and the whole corpus indexed; stopped on exit."""
    stack = LocalStack(
        kafka_port=free_port(), redis_port=free_port(), state_dir=PROJECT_ROOT / ".stack" / "bench-assistant"
    )
    stack.start()
    settings = replace(settings, brokers=stack.brokers)
    stack.create_topics(settings.topics())
    flow = FlowProcesses(FLOW, settings.to_env(), log_dir=PROJECT_ROOT / ".stack" / "bench-assistant-logs")
    try:
        docs = load_corpus()
        publish(settings, docs)
        flow.start()
        yield settings, flow, stack, wait_indexed(settings, flow, len(docs))
    finally:
        flow.stop()
        stack.stop()


def freshness(settings: AssistantSettings, count: int = 30, gap_s: float = 0.5) -> dict[str, Any]:
    """How long after its event a new document is searchable: ``count`` single upserts into a live index.

    Measured from the producer's send to the index's change record (written once the
    chunks are in the index, so from then on every search sees them) and to that
    record's arrival at a consumer.
    """
    corpus = load_corpus()
    with indexed_flow(replace(settings, answer_mode="extractive")) as (settings, flow, _, index_s):
        consumer = Consumer(settings.connection().consumer_config(**{"group.id": "fresh"}))
        consumer.assign([TopicPartition(settings.index_changes_topic, 0, len(corpus))])
        producer = Producer(settings.connection().producer_config())
        in_index, arrived = [], []
        for i in range(count):
            doc = replace(corpus[i % len(corpus)], doc_id=f"fresh-{i}", title=f"Fresh document {i}")
            sent = time.time()
            producer.produce(settings.documents_topic, key=doc.doc_id.encode(), value=doc.to_json())
            producer.flush(10)
            while True:
                msg = consumer.poll(1.0)
                if msg is not None and msg.error() is None:
                    change = orjson.loads(msg.value() or b"{}")
                    if change.get("doc_id") == doc.doc_id:
                        in_index.append((change["at"] - sent) * 1000.0)
                        arrived.append((time.time() - sent) * 1000.0)
                        break
                assert flow.alive(), "the flow died"
            time.sleep(gap_s)
        consumer.close()
    return {
        "documents": count,
        "per_document_chars_and_ms": sorted(
            (len(corpus[i % len(corpus)].text), round(ms, 1)) for i, ms in enumerate(in_index)
        ),
        "send_to_searchable_ms": _pct(in_index),
        "send_to_change_record_received_ms": _pct(arrived),
        "index_ready_s": round(index_s, 1),
    }


def run_load(
    settings: AssistantSettings, sessions: int, think_s: float, duration_s: float, warmup_s: float, drain_s: float
) -> dict[str, Any]:
    """Start a stack and the flow, index the corpus, play the sessions, and summarise what came back."""
    with indexed_flow(settings) as (settings, flow, stack, index_s):
        turns = schedule(sessions, think_s, duration_s)
        ready: Any = mp.Event()
        queue: Any = mp.Queue()
        collector = mp.Process(
            target=_consume,
            args=(
                settings.connection(),
                [settings.responses_topic, settings.handoff_topic],
                len(turns),
                duration_s + drain_s,
                ready,
                queue,
            ),
        )
        collector.start()
        ready.wait(30)
        watched = {"flow": flow.pids[0], **{name: p.pid for name, p in stack.procs.items()}}
        cpu0 = _cpu(watched)
        t0 = time.time() * 1000.0
        lag = send(settings, turns)
        got = queue.get(timeout=duration_s + drain_s + 60)
        cpu_s = {k: round(v - cpu0[k], 1) for k, v in _cpu(watched).items()}
        collector.join()
    timed = [(arr, b) for arr, b in got if b["sent_at"] >= t0 + warmup_s * 1000.0]
    routes: dict[str, list[float]] = {}
    stages: dict[str, list[float]] = {}
    tokens, batch_sizes, truncated = [], [], 0
    for arrived, body in timed:
        route = body.get("route", "handoff")
        routes.setdefault(route, []).append(arrived - body["sent_at"])
        for stage, ms in body.get("latency_ms", {}).items():
            stages.setdefault(f"{route}.{stage}", []).append(ms)
        generation = body.get("generation") or {}
        if "new_tokens" in generation:
            tokens.append(generation["new_tokens"])
            batch_sizes.append(generation["batch_size"])
            truncated += bool(body.get("truncated"))
    span_s = (max(a for a, _ in got) - t0) / 1000.0 if got else 0.0
    return {
        "sessions": sessions,
        "think_time_s": think_s,
        "duration_s": duration_s,
        "turns_sent": len(turns),
        "offered_turns_per_s": round(len(turns) / duration_s, 1),
        "answered": len(got),
        "answered_per_s": round(len(got) / span_s, 1) if span_s else 0.0,
        "sender_lag_ms": lag,
        "index_ready_s": round(index_s, 1),
        "cpu_seconds_during_load": cpu_s,
        "end_to_end_ms_by_route": {k: _pct(v) for k, v in sorted(routes.items())},
        "end_to_end_ms_all": _pct([a - b["sent_at"] for a, b in timed]),
        "stage_ms": {k: _pct(v) for k, v in sorted(stages.items())},
        "generation": {
            "answers": len(tokens),
            "mean_new_tokens": round(float(np.mean(tokens)), 1) if tokens else 0,
            "mean_batch_size": round(float(np.mean(batch_sizes)), 2) if batch_sizes else 0,
            "truncated_by_deadline": truncated,
            "tokens_per_s_overall": round(sum(tokens) / span_s, 1) if span_s and tokens else 0,
        },
    }


def batching(prompt_count: int = 16, max_new_tokens: int = 32) -> list[dict[str, float]]:
    """Tokens/s of one ``generate`` call at batch sizes 1..16 with real RAG prompts (batch efficiency)."""
    from models.knowledge import DocumentKnowledge
    from models.llm import shared_generator
    from models.prompting import build_messages, redact
    from models.text_encoder import shared_encoder
    from perf.assistant_eval import Query

    encoder = shared_encoder("cpu")
    questions = user_questions()[:prompt_count]
    kb = DocumentKnowledge(encoder)
    kb.apply([d for d in load_corpus() if d.doc_id.startswith("pydoc:")][:30])
    vectors = encoder.encode(questions)
    found = kb.answer([Query(q, v) for q, v in zip(questions, vectors, strict=True)])
    prompts = [build_messages(q, [], [redact(p)[0] for p in ps]) for q, ps in zip(questions, found, strict=True)]
    gen = shared_generator()
    gen.generate(prompts[:2], 4)  # warm-up
    rows = []
    for bs in (1, 4, 8, 16):
        t0 = time.perf_counter()
        outs = []
        for i in range(0, prompt_count, bs):
            outs += gen.generate(prompts[i : i + bs], max_new_tokens)
        dt = time.perf_counter() - t0
        toks = sum(o.new_tokens for o in outs)
        rows.append(
            {
                "batch": bs,
                "tokens": toks,
                "seconds": round(dt, 2),
                "tokens_per_s": round(toks / dt, 1),
                "answers_per_s": round(len(outs) / dt, 2),
            }
        )
        print(rows[-1])
    base = rows[0]["tokens_per_s"]
    for r in rows:
        r["speedup_vs_batch1"] = round(r["tokens_per_s"] / base, 2)
    return rows


def burst(settings: AssistantSettings, count: int = 200) -> dict[str, Any]:
    """``count`` questions sent at the same instant, each from its own session: is every one answered, within
    its deadline, with an answer (not a fragment)?"""
    with indexed_flow(settings) as (settings, flow, _, index_s):
        questions = user_questions()
        turns: list[Turn] = [(0.0, f"burst-{i}", 0, questions[i % len(questions)]) for i in range(count)]
        ready: Any = mp.Event()
        queue: Any = mp.Queue()
        deadline_s = settings.gen_deadline_ms / 1000.0
        collector = mp.Process(
            target=_consume,
            args=(settings.connection(), [settings.responses_topic], count, deadline_s + 60, ready, queue),
        )
        collector.start()
        ready.wait(30)
        send(settings, turns)
        got = queue.get(timeout=deadline_s + 120)
        collector.join()
    latencies = [arrived - body["sent_at"] for arrived, body in got]
    useful = [
        body
        for arrived, body in got
        if arrived - body["sent_at"] <= settings.gen_deadline_ms
        and body.get("answer_mode") in ("extractive", "generated")
    ]
    return {
        "questions": count,
        "answer_mode": settings.answer_mode,
        "deadline_ms": settings.gen_deadline_ms,
        "answered": len(got),
        "answered_within_deadline_with_an_answer": len(useful),
        "within_deadline_share": round(len(useful) / count, 4),
        "end_to_end_ms": _pct(latencies),
        "modes": {m: sum(1 for _, b in got if b.get("answer_mode") == m) for m in ("extractive", "generated", "none")},
        "index_ready_s": round(index_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["retrieval", "generation", "burst", "batching", "freshness"])
    parser.add_argument("--sessions", type=int, default=1500)
    parser.add_argument(
        "--think-s", type=float, default=None, help="mean think time (default 10 s retrieval, 300 s generation)"
    )
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=1, help="repeat the load run; summary figures are medians")
    parser.add_argument("--generate", action="store_true", help="burst: with LLM rewrites (answer_mode=generate)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out = args.out or REPORTS / f"assistant_{args.mode}.json"
    base = replace(AssistantSettings.from_env(), device="auto")
    if args.mode == "batching":
        report: dict[str, Any] = {"batching": batching()}
    elif args.mode == "freshness":
        report = freshness(base)
    elif args.mode == "burst":
        report = burst(replace(base, answer_mode="generate" if args.generate else "auto"))
        if not args.generate:
            record("assistant", {"burst200_within_deadline_share": report["within_deadline_share"]})
    else:
        generate = args.mode == "generation"
        think = args.think_s or (300.0 if generate else 10.0)
        settings = replace(base, answer_mode="generate" if generate else "extractive")
        runs = [
            run_load(
                settings, args.sessions, think, args.duration_s, args.warmup_s, drain_s=120.0 if generate else 30.0
            )
            for _ in range(args.runs)
        ]
        p99s = [r["end_to_end_ms_by_route"].get("knowledge", {}).get("p99", float("nan")) for r in runs]
        median, low, high = median_and_spread(p99s)
        report = {"runs": runs, "knowledge_p99_ms_median": median, "knowledge_p99_ms_spread": [low, high]}
        if not generate and args.sessions == 1500 and args.runs >= 3:
            record("assistant", {"retrieval_p99_ms_1500_sessions": median})
    report["machine"] = "2-core shared dev VM, CPU only; broker, flow and load generator on the same 2 cores"
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    print(orjson.dumps({k: v for k, v in report.items() if k != "runs"}, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
