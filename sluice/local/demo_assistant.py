"""``sluice demo assistant`` (``make assistant-demo``): the conversational assistant end to end on a local stack.

Starts Tansu + Redis, converts the LLM once if needed, publishes the corpus onto
``documents``, runs ``python -m bytewax.run "dataflows.assistant:from_env()"``, waits
until every document is indexed, asks a short scripted conversation (knowledge
questions, a follow-up, small talk, a request for a human) and prints each
answer with its citations and latency breakdown. Then it stops everything.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Any

import orjson
from confluent_kafka import Producer

from models.chat import ChatRequest
from models.convert_llm import ensure_converted
from operators.kafka.admin import read_all
from sluice.local.corpus import load_corpus, publish
from sluice.local.stack import PROJECT_ROOT, stack_from_env
from sluice.processes import FlowProcesses
from sluice.settings import AssistantSettings

FLOW = "dataflows.assistant:from_env()"
Body = dict[str, Any]

CONVERSATION = [
    ("alice", "hi there!"),
    ("alice", "What does the with statement do?"),
    ("alice", "what about its exceptions?"),
    ("bob", "How do I read and write JSON?"),
    ("bob", "How do I change a variable in an enclosing function from a nested function?"),
    ("carol", "this is useless, I want to talk to a real person now"),
    ("carol", "thanks a lot"),
]


def wait_indexed(settings: AssistantSettings, flow: FlowProcesses, count: int, timeout_s: float = 600.0) -> float:
    """Wait until the index has reported ``count`` document changes; returns the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if not flow.alive():
            raise RuntimeError("the flow exited; see .stack/assistant-logs/")
        if len(read_all(settings.connection(), settings.index_changes_topic, timeout_s=5)) >= count:
            return time.monotonic() - t0
        time.sleep(1.0)
    raise TimeoutError(f"fewer than {count} documents indexed after {timeout_s:.0f}s")


def ask(
    settings: AssistantSettings, turns: list[tuple[str, str]], timeout_s: float = 300.0
) -> dict[tuple[str, str], Body]:
    """Send ``turns`` (session, text) and wait for one response or handoff per turn."""
    producer = Producer(settings.connection().producer_config())
    for n, (session, text) in enumerate(turns):
        req = ChatRequest(session, str(n), text, time.time() * 1000.0)
        producer.produce(settings.requests_topic, key=session.encode(), value=req.to_json())
    producer.flush(10)
    deadline = time.monotonic() + timeout_s
    out: dict[tuple[str, str], Body] = {}
    while len(out) < len(turns) and time.monotonic() < deadline:
        for topic in (settings.responses_topic, settings.handoff_topic):
            for msg in read_all(settings.connection(), topic, timeout_s=5):
                body = orjson.loads(msg.value() or b"{}")
                out[(body["session_id"], body["turn_id"])] = body
        time.sleep(0.5)
    return out


def describe(body: Body | None) -> list[str]:
    """The lines the demo prints for one reply, whatever its route (knowledge, small talk, error, handoff).

    >>> describe({"route": "small_talk", "intent": "greeting", "intent_confidence": 0.97, "answer": "Hello!"})
    ['   route small_talk (intent greeting 0.97)', '   answer: Hello!']
    >>> describe(None)
    ['   (no answer)']
    """
    if body is None:
        return ["   (no answer)"]
    if body.get("route", "handoff") == "handoff":  # handoff records (their own topic) carry no route
        return [f"   -> handed off to a human (intent {body['intent']}, conversation {body['conversation']})"]
    head = f"   route {body['route']}"
    if body.get("intent") is not None:
        head += f" (intent {body['intent']} {body['intent_confidence']:.2f})"
    if body.get("query"):
        head += f"  query: {body['query']}"
    lines = [head, f"   answer: {body['answer']}"]
    for c in body.get("citations", []):
        cited = "  <- cited" if c["cited"] else ""
        lines.append(f"     [{c['n']}] {c['title']} ({c['doc_id']}, score {c['score']:.3f}){cited}")
    if body.get("latency_ms"):
        lines.append("   latency ms: " + "  ".join(f"{k} {v:.0f}" for k, v in body["latency_ms"].items()))
    return lines


def show(turns: list[tuple[str, str]], answers: dict[tuple[str, str], Body]) -> None:
    for n, (session, text) in enumerate(turns):
        print(f"\n[{session}] {text}")
        print("\n".join(describe(answers.get((session, str(n))))))


def run(args: argparse.Namespace) -> int:
    stack = stack_from_env()
    print(f"starting local stack: kafka {stack.brokers}, redis {stack.redis_url}")
    stack.start()
    settings = replace(AssistantSettings.from_env(), brokers=stack.brokers)
    if args.generate:
        settings = replace(settings, answer_mode="generate")
    stack.create_topics(settings.topics())
    flow = FlowProcesses(FLOW, settings.to_env(), log_dir=PROJECT_ROOT / ".stack" / "assistant-logs")
    try:
        if settings.answer_mode == "generate":
            print(f"LLM ready in {ensure_converted()}")
        docs = load_corpus()
        publish(settings, docs)
        print(f"published {len(docs)} documents; starting the flow")
        flow.start()
        took = wait_indexed(settings, flow, len(docs))
        print(f"all {len(docs)} documents indexed {took:.1f}s after the flow started (includes model loading)")
        show(CONVERSATION, ask(settings, CONVERSATION))
    finally:
        flow.stop()
        stack.stop()
        print("\nstack stopped")
    return 0
