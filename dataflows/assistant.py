"""Conversational assistant: a live hybrid index from the stream, session memory, routing, grounded answers.

    python -m bytewax.run "dataflows.assistant:from_env()"
    python -m bytewax.run "dataflows.assistant:from_env()" -r .recovery -s 1 -b 0   # recoverable
    sluice run assistant -- -r .recovery -s 1 -b 0                              # the same

documents -> parse (bad -> DLQ) -> live index: chunk by section and sentence,
embed chunks and sentences in small steps, dense + BM25 (readiness announced)
chat-requests -> parse + bounds (bad -> DLQ and an error reply) -> ONE embedding
per turn (micro-batched on a background thread; bf16 where the CPU has it, else
fp32: independent of the batch) -> intent ->
session memory (user turns with the query they were searched with, and the
assistant's answers, read back from chat-responses) -> follow-ups searched with
the conversation's subject -> route:
    knowledge  -> hybrid search (fused, one passage per document) -> the
                  extractive answer from the passages' own sentences, cited;
                  with ``answer_mode=generate`` (default on a GPU) an LLM
                  rewrite on a background thread, planned to finish before the
                  turn's deadline and kept only where the passages support it
    handoff    -> handoff (with the conversation so far)
    small_talk -> canned reply
Configuration: ``SLUICE_*`` variables (:class:`sluice.settings.AssistantSettings`).
Observability (:mod:`dataflows.observability`): every stage records the age of
its turns, the encoder, intent head and LLM their call times, the LLM its
tokens/s; replies carry the request's ``traceparent``; SLO burn is measured
when a question has been searched (``kb_search``).
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from typing import Any

import bytewax.operators as op
import numpy as np
import orjson
import torch
from bytewax.dataflow import Dataflow, Stream

from dataflows.observability import alarm_records
from dataflows.runtime import flow_from_env, kafka_source, limit_threads, shards_for
from models.answering import Answer, extract_answer, verify_generated
from models.chat import AnswerNote, ChatRequest, parse_answer_note, parse_chat_request, reply_address
from models.document import DocumentEvent, parse_document_event
from models.intent import Intent, Route, shared_intent_router
from models.knowledge import DocumentKnowledge
from models.llm import plan_batch, shared_generator
from models.prompting import Remembered, build_messages, prompt_context, redact, resolve_query
from models.text_encoder import shared_encoder
from operators.async_batch import async_micro_batch
from operators.dead_letter import DeadLetter, parse_or_dead_letter
from operators.kafka.output import kafka_output
from operators.kafka.records import ID_HEADER, KafkaRecord, Position, SourceRecord
from operators.live_index import Answered, IndexOut, live_index
from operators.metrics import model_call, record_generation
from operators.microbatch import micro_batch
from operators.routing import split_by_route
from operators.session_memory import session_memory
from operators.tracing import trace_headers
from sluice.settings import AssistantSettings
from state.index_events import IndexChange, IndexReady
from state.knowledge_index import Retrieved

log = logging.getLogger("sluice.assistant")

SMALL_TALK_REPLIES = {
    "greeting": "Hello! Ask me anything about the Python language reference.",
    "goodbye": "Goodbye! Come back with more Python questions any time.",
    "thank_you": "You're welcome!",
    "are_you_a_bot": "I'm an automated assistant that answers questions from the Python language reference.",
    "what_can_i_ask_you": "Ask me about Python's statements, expressions, data model and built-in types.",
}
DEFAULT_SMALL_TALK = "I'm a documentation assistant for the Python language reference; ask me a question about it."


@dataclass(frozen=True, slots=True)
class Turn:
    """A chat turn on its way through the flow, collecting what each step adds."""

    request: ChatRequest
    position: Position
    history: tuple[Remembered, ...]
    query: str
    received_at: float
    vector: np.ndarray | None = None
    own_vector: np.ndarray | None = None  # the turn's own embedding (the subject's is added for follow-ups)
    intent: Intent | None = None
    follow_up: bool = False
    embedded_at: float = 0.0
    source: SourceRecord | None = None  # the request record (its Kafka timestamp and trace headers)


@dataclass(frozen=True, slots=True)
class Grounded:
    """A knowledge turn with its passages and its answer."""

    turn: Turn
    passages: tuple[Retrieved, ...]
    redactions: int
    answer: Answer
    index_wait_ms: float
    index_warming: bool
    answered_at: float
    generation: dict[str, Any] | None = None


def _received(item: tuple[SourceRecord, ChatRequest]) -> Turn:
    src, req = item
    return Turn(req, src.position, (), req.text, time.time(), source=src)


def _turn_source(turn: Turn) -> SourceRecord:
    assert turn.source is not None, "turns are made from records"
    return turn.source


def _grounded_source(g: Grounded) -> SourceRecord:
    return _turn_source(g.turn)


def embed_and_classify(turns: list[Turn], device: str, int8: bool = False, bf16: bool | None = None) -> list[Turn]:
    """One encoder call for the micro-batch; the same vectors feed the intent head and, later, search."""
    encoder, router = shared_encoder(device, int8, bf16), shared_intent_router()
    with model_call("text-encoder", encoder.name, str(encoder.device), len(turns)):
        vectors = encoder.encode([t.request.text for t in turns])
    with model_call("intent", router.name, "cpu", len(turns)):
        intents = router.classify(vectors)
    now = time.time()
    return [
        replace(t, vector=v, own_vector=v, intent=i, embedded_at=now)
        for t, v, i in zip(turns, vectors, intents, strict=True)
    ]


def with_memory(turn: Turn | AnswerNote, history: tuple[Remembered, ...]) -> Turn | AnswerNote:
    """Attach the session's conversation; a follow-up is searched with the subject turn's query and vector.

    Routing keeps the turn's own intent ("talk to a human" stays a handoff
    whatever came before); only retrieval leans on the conversation, without a
    second embedding per turn. Runs inside the memory step, so the turn is
    remembered with the query it was searched with.
    """
    if isinstance(turn, AnswerNote):
        return turn
    query, vector, follow_up = resolve_query(turn.request.text, turn.vector, history)
    return replace(turn, history=history, query=query, vector=vector, follow_up=follow_up)


def _turn_of(item: tuple[str, tuple[Turn | AnswerNote, tuple[Remembered, ...]]]) -> Turn:
    turn = item[1][0]
    assert isinstance(turn, Turn), "answer notes are remembered, never emitted"
    return turn


def remember(value: Turn | AnswerNote) -> Remembered:
    if isinstance(value, AnswerNote):
        return Remembered("assistant", value.text)
    return Remembered("user", value.request.text, value.query, value.follow_up, value.vector)


def _route_of(turn: Turn) -> str:
    assert turn.intent is not None, "routing before classification"
    return turn.intent.route.value


def _record(
    topic: str, key: str, position: Position, body: dict[str, Any], source: SourceRecord | None = None
) -> KafkaRecord:
    """An output record whose ``sluice.id`` is the position of the input it answers (and its trace headers)."""
    headers = [(ID_HEADER, position.id), *trace_headers(source)]
    return KafkaRecord(topic=topic, key=key.encode(), value=orjson.dumps(body), headers=headers)


def ground(answered: Answered[Turn, list[Retrieved]]) -> Grounded:
    """The extractive answer: the passages' best sentences (instruction-like ones removed first)."""
    turn = answered.query
    cleaned = [redact(p) for p in answered.result]
    passages = tuple(p for p, _ in cleaned)
    assert turn.vector is not None
    answer = extract_answer(turn.vector, turn.request.text, turn.query, passages)
    return Grounded(
        turn, passages, sum(n for _, n in cleaned), answer, answered.waited_ms, answered.warming, time.time()
    )


def answer_prompt(g: Grounded, settings: AssistantSettings) -> list[dict[str, str]]:
    """The LLM's messages for a turn: its best ``prompt_passages`` passages are quoted (every token of
    prompt costs generation time), and further down as far as the extractive answer it may replace
    cites, so that answer's evidence is always in front of the model (numbered as in the citations)."""
    context = prompt_context(g.passages, g.answer.cited, settings.prompt_passages)
    return build_messages(g.turn.request.text, g.turn.history, context, settings.context_chars)


def generate_answers(items: list[Grounded], settings: AssistantSettings) -> list[Grounded]:
    """Rewrite the extractive answers with the LLM where the deadline allows; keep only supported sentences.

    Rows that cannot get ``gen_min_new_tokens`` before their deadline (given the
    measured speed) are not generated at all: they keep the extractive answer,
    which is already grounded and cited. Questions no retrieved sentence is close to
    (``Answer.off_topic``) keep "not found": a generated answer would have nothing to stand on.
    """
    out = list(items)
    unanswerable = {i for i, g in enumerate(items) if g.answer.off_topic}
    for i in unanswerable:  # nothing retrieved is about the question: a generated answer would be invented
        out[i] = replace(items[i], generation={"skipped": "no passage is close enough to the question"})
    rows = [i for i in range(len(items)) if i not in unanswerable]
    if not rows:
        return out
    gen = shared_generator(settings.device, settings.llm_path)
    encoder = shared_encoder(settings.device, settings.encoder_int8, settings.bf16)
    prompts = [answer_prompt(items[i], settings) for i in rows]
    deadlines = [items[i].turn.request.sent_at_ms / 1000.0 + settings.gen_deadline_ms / 1000.0 for i in rows]
    now = time.time()
    planned, budget = plan_batch(
        deadlines, now, gen.prompt_tokens(prompts), gen.speed, settings.gen_min_new_tokens, settings.gen_max_new_tokens
    )
    keep = [rows[j] for j in planned]
    if keep:
        started = time.time()
        with model_call("llm", gen.name, str(gen.device), len(keep)):
            outs = gen.generate([prompts[j] for j in planned], budget, [deadlines[j] for j in planned])
        finished = time.time()
        record_generation(gen.name, sum(o.new_tokens for o in outs), finished - started)
        for i, generated in zip(keep, outs, strict=True):
            checked = verify_generated(generated.text, items[i].passages, encoder.encode, generated.truncated)
            info = {
                "model": gen.name,
                "new_tokens": generated.new_tokens,
                "batch_size": len(keep),
                "seconds": round(finished - started, 3),
                "kept_sentences": len(checked.sentences),
                "dropped_sentences": len(checked.dropped),
            }
            answer = checked if checked.sentences else items[i].answer
            out[i] = replace(items[i], answer=answer, generation=info)
    for i in set(rows) - set(keep):
        out[i] = replace(items[i], generation={"skipped": "the deadline leaves too little time to generate"})
    return out


def _latency(turn: Turn, done: float, **stages: float | None) -> dict[str, float]:
    sent = turn.request.sent_at_ms / 1000.0
    out = {"queue": turn.received_at - sent, "embed": turn.embedded_at - turn.received_at}
    out |= {k: v for k, v in stages.items() if v is not None}
    out["total"] = done - sent
    return {k: round(v * 1000.0, 2) for k, v in out.items()}


def _base(turn: Turn, route: str) -> dict[str, Any]:
    intent = turn.intent
    return {
        "session_id": turn.request.session_id,
        "turn_id": turn.request.turn_id,
        "route": route,
        "intent": intent.label if intent else None,
        "intent_confidence": round(intent.confidence, 4) if intent else None,
        "question": turn.request.text,
    }


def knowledge_response(settings: AssistantSettings, g: Grounded) -> KafkaRecord:
    """The ``chat-responses`` record of a knowledge turn (its shape is fixed here, whatever a model says)."""
    done = time.time()
    turn, answer = g.turn, g.answer
    body = {
        **_base(turn, Route.KNOWLEDGE.value),
        "query": turn.query,
        "follow_up": turn.follow_up,
        "answer": answer.text,
        "answer_mode": answer.mode,
        "answer_sentences": [{"text": s.text, "passage": s.passage, "support": s.support} for s in answer.sentences],
        "truncated": answer.truncated,
        "citations": [
            {
                "n": n,
                "doc_id": p.hit.doc_id,
                "title": p.hit.title,
                "section": p.heading,
                "score": round(p.hit.score, 4),
                "cited": n in answer.cited,
            }
            for n, p in enumerate(g.passages, start=1)
        ],
        "context_redactions": g.redactions,
        "index_warming": g.index_warming,
        "generation": g.generation,
        "latency_ms": _latency(
            turn,
            done,
            index_wait=g.index_wait_ms / 1000.0,
            search=g.answered_at - turn.embedded_at - g.index_wait_ms / 1000.0,
            answer=done - g.answered_at,
        ),
        "sent_at": turn.request.sent_at_ms,
        "responded_at": done * 1000.0,
    }
    return _record(settings.responses_topic, turn.request.session_id, turn.position, body, turn.source)


def small_talk_reply(settings: AssistantSettings, turn: Turn) -> KafkaRecord:
    """A canned reply: no retrieval, no generation."""
    done = time.time()
    label = turn.intent.label if turn.intent else ""
    body = {
        **_base(turn, Route.SMALL_TALK.value),
        "answer": SMALL_TALK_REPLIES.get(label, DEFAULT_SMALL_TALK),
        "answer_mode": "canned",
        "citations": [],
        "latency_ms": _latency(turn, done),
        "sent_at": turn.request.sent_at_ms,
        "responded_at": done * 1000.0,
    }
    return _record(settings.responses_topic, turn.request.session_id, turn.position, body, turn.source)


def handoff_record(settings: AssistantSettings, turn: Turn) -> KafkaRecord:
    """A ``handoff`` record: the turn, why it was handed off, and the conversation so far (both sides)."""
    assert turn.intent is not None
    body = {
        "session_id": turn.request.session_id,
        "turn_id": turn.request.turn_id,
        "intent": turn.intent.label,
        "intent_confidence": round(turn.intent.confidence, 4),
        "text": turn.request.text,
        "conversation": [{"role": e.role, "text": e.text} for e in turn.history]
        + [{"role": "user", "text": turn.request.text}],
        "sent_at": turn.request.sent_at_ms,
        "handed_off_at": time.time() * 1000.0,
    }
    return _record(settings.handoff_topic, turn.request.session_id, turn.position, body, turn.source)


def error_reply(settings: AssistantSettings, dead: DeadLetter) -> KafkaRecord | None:
    """An error answer for a request that failed validation, when it says who asked."""
    address = reply_address(dead.source.value)
    if address is None:
        return None
    session, turn_id = address
    body = {
        "session_id": session,
        "turn_id": turn_id,
        "route": "error",
        "error": dead.reason,
        "answer": f"Sorry, I could not take that message: {dead.reason}.",
        "answer_mode": "error",
        "citations": [],
        "responded_at": time.time() * 1000.0,
    }
    return _record(settings.responses_topic, session, dead.source.position, body, dead.source)


def index_record(settings: AssistantSettings, tagged: tuple[Position | None, IndexChange | IndexReady]) -> KafkaRecord:
    position, event = tagged
    if isinstance(event, IndexReady):
        how = (
            f"{event.documents_indexed} indexed in {event.backlog_seconds:.1f}s"
            if event.documents_indexed
            else "restored from the checkpoint"
        )
        log.info("knowledge index ready: %d documents, %d chunks (%s)", event.doc_count, event.chunk_count, how)
        body = asdict(event)
        headers = [(ID_HEADER, f"ready/{event.doc_count}/{event.chunk_count}/{event.at}".encode())]
        return KafkaRecord(settings.index_changes_topic, b"ready", orjson.dumps(body), headers)
    assert position is not None
    return _record(settings.index_changes_topic, event.doc_id, position, {"event": "change", **asdict(event)})


def answer_mode(settings: AssistantSettings) -> str:
    """``auto`` is ``generate`` where a GPU makes it fast enough, else ``extractive``."""
    if settings.answer_mode != "auto":
        return settings.answer_mode
    return "generate" if torch.cuda.is_available() and settings.device in ("auto", "cuda") else "extractive"


def build_flow(settings: AssistantSettings, name: str = "assistant") -> Dataflow:
    """The assistant dataflow for ``settings`` (see the module docstring)."""
    limit_threads(settings.torch_threads)
    # load the models now: a missing one fails at start, not mid-stream
    encoder = shared_encoder(settings.device, settings.encoder_int8, settings.bf16)
    shared_intent_router()
    generate = answer_mode(settings) == "generate"
    if generate:
        shared_generator(settings.device, settings.llm_path)
    conn = settings.connection()
    flow = Dataflow(name)
    source = functools.partial(kafka_source, settings)

    # Knowledge in
    doc_records = op.input("documents", flow, source(settings.documents_topic, settings.start_from))
    docs = parse_or_dead_letter("parse_documents", doc_records, parse_document_event)
    doc_events: Stream[tuple[DocumentEvent, Position]] = op.map(
        "doc_event", docs.ok, lambda rd: (rd[1], rd[0].position)
    )

    # Conversations in, and the assistant's own answers back into memory
    req_records = op.input(
        "requests", flow, source(settings.requests_topic, settings.requests_start_from or settings.start_from)
    )
    reqs = parse_or_dead_letter(
        "parse_requests", req_records, functools.partial(parse_chat_request, max_chars=settings.max_request_chars)
    )
    # On a background thread by default: torch computes without the GIL, so parsing, memory, search and the
    # answers of earlier turns go on meanwhile, and the next batch holds everything that arrived during the call.
    batcher = async_micro_batch if settings.embed_async else micro_batch
    embedded: Stream[Turn] = batcher(
        "embed",
        op.map("turn", reqs.ok, _received),
        functools.partial(embed_and_classify, device=settings.device, int8=settings.encoder_int8, bf16=settings.bf16),
        shard_key=lambda t: t.request.session_id,
        max_batch=settings.embed_max_batch,
        max_wait=timedelta(milliseconds=settings.embed_max_wait_ms),
        shards=shards_for(settings.embed_shards),
        origin=_turn_source,
    )
    said = parse_or_dead_letter(
        "parse_answers", op.input("answers", flow, source(settings.responses_topic, "latest")), parse_answer_note
    )
    notes = op.map("note", said.ok, lambda rn: rn[1])
    conversation: Stream[Turn | AnswerNote] = op.merge("conversation", embedded, notes)
    remembered = session_memory(
        "memory",
        op.key_on(
            "by_session", conversation, lambda v: v.session_id if isinstance(v, AnswerNote) else v.request.session_id
        ),
        max_turns=settings.max_turns,
        idle_timeout=timedelta(seconds=settings.session_idle_timeout_s),
        remember=remember,
        is_note=lambda v: isinstance(v, AnswerNote),
        transform=with_memory,
    )
    turns = op.map("unkey", remembered, _turn_of)
    routes = split_by_route("route", turns, _route_of, [r.value for r in Route])

    def knowledge(state: Any | None) -> DocumentKnowledge:
        return DocumentKnowledge(encoder, settings.chunk_tokens, settings.chunk_overlap, settings.top_k, state)

    index: IndexOut[Turn, list[Retrieved]] = live_index(
        "kb",
        doc_events,
        routes[Route.KNOWLEDGE.value],
        knowledge,
        budget=settings.index_budget_chars,
        max_query_wait=timedelta(milliseconds=settings.index_max_wait_ms),
        origin=_turn_source,
    )
    grounded = op.map("ground", index.answered, ground)
    if generate:
        grounded = async_micro_batch(
            "generate",
            grounded,
            functools.partial(generate_answers, settings=settings),
            shard_key=lambda g: g.turn.request.session_id,
            max_batch=settings.gen_max_batch,
            max_wait=timedelta(milliseconds=settings.gen_max_wait_ms),
            shards=shards_for(settings.gen_shards),
            origin=_grounded_source,
        )
    answers = op.map("respond", grounded, functools.partial(knowledge_response, settings))
    chatter = op.map("small_talk", routes[Route.SMALL_TALK.value], functools.partial(small_talk_reply, settings))
    handoffs = op.map("handoff", routes[Route.HANDOFF.value], functools.partial(handoff_record, settings))
    changes = op.map("change_records", index.changes, functools.partial(index_record, settings))
    errors = op.filter_map("error_replies", reqs.dead, functools.partial(error_reply, settings))
    dead = op.map("dlq_records", op.merge("dead", docs.dead, reqs.dead), lambda d: d.to_record(settings.dlq_topic))
    alarms = alarm_records(settings, req_records, slo_stage="kb_search")
    kafka_output(
        "out",
        op.merge("all_out", answers, chatter, handoffs, changes, errors, dead, alarms),
        conn,
        settings.output_topics(),
        exactly_once=settings.exactly_once,
        transactional_id_prefix=settings.transactional_id_prefix,
    )
    return flow


def from_env() -> Dataflow:
    """The flow ``SLUICE_*`` variables describe, after checking Kafka, the topics and the device."""
    return flow_from_env(AssistantSettings, build_flow, redis=False)
