"""Conversational assistant: a live RAG index from the stream, session memory, intent routing, batched answers.

    python -m bytewax.run "dataflows.assistant:from_env()"
    python -m bytewax.run "dataflows.assistant:from_env()" -r .recovery -s 1 -b 0   # recoverable
    sluice run assistant -- -r .recovery -s 1 -b 0                              # the same

documents -> parse (bad -> DLQ) -> chunk + embed (batched) -> live faiss index
chat-requests -> parse + bounds (bad -> DLQ) -> ONE embedding per turn (micro-batched)
-> intent (classifier head on that embedding) -> session memory (last turns
and their query vectors, idle expiry) -> follow-ups search with the previous
query's vector added -> route:
    knowledge  -> search the index with that embedding -> prompt with numbered,
                  cleaned context -> micro-batched generate on a background
                  thread (the rest of the flow keeps moving) -> chat-responses
    handoff    -> handoff (with the conversation so far)
    small_talk -> canned reply -> chat-responses
Configuration: ``SLUICE_*`` variables (:class:`sluice.settings.AssistantSettings`).
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from typing import Any

import bytewax.operators as op
import numpy as np
import orjson
import torch
from bytewax.dataflow import Dataflow

from dataflows.runtime import flow_from_env, kafka_source
from models.chat import ChatRequest, parse_chat_request
from models.chunking import document_chunks
from models.document import DocumentEvent, parse_document_event
from models.intent import Intent, Route, shared_intent_router
from models.llm import shared_generator
from models.prompting import Passage, build_messages, cited_numbers, passages, rewrite_query
from models.text_encoder import shared_encoder
from operators.async_batch import async_micro_batch
from operators.dead_letter import parse_or_dead_letter
from operators.kafka.output import kafka_output
from operators.kafka.records import ID_HEADER, KafkaRecord, Position, SourceRecord
from operators.live_index import live_vector_index
from operators.microbatch import micro_batch
from operators.routing import split_by_route
from operators.session_memory import session_memory
from sluice.settings import AssistantSettings
from state.vector_index import Hit

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
    history: tuple[str, ...]
    query: str
    received_at: float
    vector: np.ndarray | None = None
    intent: Intent | None = None
    embedded_at: float = 0.0
    hits: tuple[Hit, ...] = ()
    searched_at: float = 0.0


def _received(item: tuple[SourceRecord, ChatRequest]) -> Turn:
    src, req = item
    return Turn(req, src.position, (), req.text, time.time())


def with_memory(item: tuple[Turn, tuple[tuple[str, np.ndarray | None], ...]]) -> Turn:
    """Attach the session's earlier turns; a follow-up searches with its own vector plus the previous query's.

    Routing keeps the turn's own intent ("talk to a human" stays a handoff
    whatever came before); only retrieval leans on the conversation, without a
    second embedding per turn.
    """
    turn, earlier = item
    history = tuple(text for text, _ in earlier)
    query = rewrite_query(turn.request.text, history)
    previous = earlier[-1][1] if earlier else None
    if query == turn.request.text or turn.vector is None or previous is None:
        return replace(turn, history=history)
    combined = turn.vector + previous
    return replace(turn, history=history, query=query, vector=combined / np.linalg.norm(combined))


def _route_of(turn: Turn) -> str:
    assert turn.intent is not None, "routing before classification"
    return turn.intent.route.value


def _vector_of(turn: Turn) -> np.ndarray:
    assert turn.vector is not None, "search before embedding"
    return turn.vector


def embed_and_classify(turns: list[Turn], device: str, int8: bool = False) -> list[Turn]:
    """One encoder call for the micro-batch; the same vectors feed the intent head and, later, search."""
    vectors = shared_encoder(device, int8).encode([t.request.text for t in turns])
    intents = shared_intent_router().classify(vectors)
    now = time.time()
    return [replace(t, vector=v, intent=i, embedded_at=now) for t, v, i in zip(turns, vectors, intents, strict=True)]


def _record(topic: str, key: str, position: Position, body: dict[str, Any]) -> KafkaRecord:
    """An output record whose ``sluice.id`` is the position of the input it answers."""
    return KafkaRecord(topic=topic, key=key.encode(), value=orjson.dumps(body), headers=[(ID_HEADER, position.id)])


def _latency(turn: Turn, searched: float | None, generated: float | None, done: float) -> dict[str, float]:
    sent = turn.request.sent_at_ms / 1000.0
    out = {
        "queue": turn.received_at - sent,
        "embed": turn.embedded_at - turn.received_at,
    }
    if searched is not None:
        out["search"] = searched - turn.embedded_at
    if generated is not None and searched is not None:
        out["generate"] = generated - searched
    out["total"] = done - sent
    return {k: round(v * 1000.0, 2) for k, v in out.items()}


def response(
    settings: AssistantSettings,
    turn: Turn,
    answer: str | None,
    context: list[Passage],
    extra: dict[str, Any],
    searched: float | None = None,
    generated: float | None = None,
) -> KafkaRecord:
    """The ``chat-responses`` record of a turn (its shape is fixed here, whatever the model or documents say)."""
    done = time.time()
    intent = turn.intent
    assert intent is not None
    cited = cited_numbers(answer, len(context)) if answer else []
    body = {
        "session_id": turn.request.session_id,
        "turn_id": turn.request.turn_id,
        "route": intent.route.value,
        "intent": intent.label,
        "intent_confidence": round(intent.confidence, 4),
        "question": turn.request.text,
        "query": turn.query,
        "answer": answer,
        "citations": [
            {
                "n": p.number,
                "doc_id": p.hit.doc_id,
                "title": p.hit.title,
                "score": round(p.hit.score, 4),
                "cited": p.number in cited,
            }
            for p in context
        ],
        "context_redactions": sum(p.redactions for p in context),
        **extra,
        "latency_ms": _latency(turn, searched, generated, done),
        "sent_at": turn.request.sent_at_ms,
        "responded_at": done * 1000.0,
    }
    return _record(settings.responses_topic, turn.request.session_id, turn.position, body)


def small_talk_reply(settings: AssistantSettings, turn: Turn) -> KafkaRecord:
    """A canned reply: no retrieval, no generation."""
    label = turn.intent.label if turn.intent else ""
    return response(settings, turn, SMALL_TALK_REPLIES.get(label, DEFAULT_SMALL_TALK), [], {})


def handoff_record(settings: AssistantSettings, turn: Turn) -> KafkaRecord:
    """A ``handoff`` record: the turn, why it was handed off, and the conversation so far."""
    assert turn.intent is not None
    body = {
        "session_id": turn.request.session_id,
        "turn_id": turn.request.turn_id,
        "intent": turn.intent.label,
        "intent_confidence": round(turn.intent.confidence, 4),
        "text": turn.request.text,
        "conversation": [*turn.history, turn.request.text],
        "sent_at": turn.request.sent_at_ms,
        "handed_off_at": time.time() * 1000.0,
    }
    return _record(settings.handoff_topic, turn.request.session_id, turn.position, body)


def retrieval_only_answer(settings: AssistantSettings, turn: Turn) -> KafkaRecord:
    """The retrieval path without generation: the cleaned passages are the answer's material."""
    context = passages(turn.hits, settings.context_chars)
    return response(settings, turn, None, context, {"context": [p.text for p in context]}, turn.searched_at)


def generate_answers(turns: list[Turn], settings: AssistantSettings) -> list[KafkaRecord]:
    """One ``generate`` call for the micro-batch; each turn keeps its own deadline."""
    gen = shared_generator(settings.device, settings.llm_path)
    contexts = [passages(t.hits, settings.context_chars) for t in turns]
    prompts = [build_messages(t.request.text, t.history, c) for t, c in zip(turns, contexts, strict=True)]
    deadlines = [t.request.sent_at_ms / 1000.0 + settings.gen_deadline_ms / 1000.0 for t in turns]
    started = time.time()
    outs = gen.generate(prompts, settings.gen_max_new_tokens, deadlines)
    finished = time.time()
    tokens = sum(o.new_tokens for o in outs)
    records = []
    for turn, context, out in zip(turns, contexts, outs, strict=True):
        extra = {
            "model": gen.name,
            "truncated": out.truncated,
            "generation": {
                "new_tokens": out.new_tokens,
                "batch_size": len(turns),
                "batch_tokens_per_s": round(tokens / max(finished - started, 1e-9), 1),
            },
        }
        records.append(response(settings, turn, out.text, context, extra, turn.searched_at, finished))
    return records


def build_flow(settings: AssistantSettings, name: str = "assistant") -> Dataflow:
    """The assistant dataflow for ``settings`` (see the module docstring)."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    # load the models now: a missing one fails at start, not mid-stream
    encoder = shared_encoder(settings.device, settings.encoder_int8)
    shared_intent_router()
    if settings.generate:
        shared_generator(settings.device, settings.llm_path)
    conn = settings.connection()
    flow = Dataflow(name)
    source = functools.partial(kafka_source, settings)

    # Knowledge in
    doc_records = op.input("documents", flow, source(settings.documents_topic, settings.start_from))
    docs = parse_or_dead_letter("parse_documents", doc_records, parse_document_event)
    doc_events = op.map("doc_event", docs.ok, lambda rd: (rd[1], rd[0].position))

    # Conversations in
    req_records = op.input(
        "requests", flow, source(settings.requests_topic, settings.requests_start_from or settings.start_from)
    )
    reqs = parse_or_dead_letter(
        "parse_requests", req_records, functools.partial(parse_chat_request, max_chars=settings.max_request_chars)
    )
    embedded = micro_batch(
        "embed",
        op.map("turn", reqs.ok, _received),
        functools.partial(embed_and_classify, device=settings.device, int8=settings.encoder_int8),
        shard_key=lambda t: t.request.session_id,
        max_batch=settings.embed_max_batch,
        max_wait=timedelta(milliseconds=settings.embed_max_wait_ms),
        shards=settings.embed_shards,
    )
    remembered = session_memory(
        "memory",
        op.key_on("by_session", embedded, lambda t: t.request.session_id),
        max_turns=settings.max_turns,
        idle_timeout=timedelta(seconds=settings.session_idle_timeout_s),
        remember=lambda t: (t.request.text, t.vector),  # the user's words and the vector they searched with
    )
    turns = op.map("with_memory", remembered, lambda kv: with_memory(kv[1]))
    routes = split_by_route("route", turns, _route_of, [r.value for r in Route])

    def chunker(doc: DocumentEvent) -> list[tuple[str, str]]:
        return document_chunks(encoder.tokenizer, doc.title, doc.text, settings.chunk_tokens, settings.chunk_overlap)

    index = live_vector_index(
        "kb",
        doc_events,
        routes[Route.KNOWLEDGE.value],
        embed=encoder.encode,
        chunk=chunker,
        query_vector=_vector_of,
        dim=encoder.dim,
        k=settings.top_k,
        model=encoder.name,
    )
    retrieved = op.map("retrieved", index.hits, lambda th: replace(th[0], hits=tuple(th[1]), searched_at=time.time()))
    if settings.generate:
        answers = async_micro_batch(
            "generate",
            retrieved,
            functools.partial(generate_answers, settings=settings),
            shard_key=lambda t: t.request.session_id,
            max_batch=settings.gen_max_batch,
            max_wait=timedelta(milliseconds=settings.gen_max_wait_ms),
            shards=settings.gen_shards,
        )
    else:
        answers = op.map("context_answer", retrieved, functools.partial(retrieval_only_answer, settings))
    chatter = op.map("small_talk", routes[Route.SMALL_TALK.value], functools.partial(small_talk_reply, settings))
    handoffs = op.map("handoff", routes[Route.HANDOFF.value], functools.partial(handoff_record, settings))
    changes = op.map(
        "change_records",
        index.changes,
        lambda pc: _record(settings.index_changes_topic, pc[1].doc_id, pc[0], asdict(pc[1])),
    )
    dead = op.map("dlq_records", op.merge("dead", docs.dead, reqs.dead), lambda d: d.to_record(settings.dlq_topic))
    kafka_output(
        "out",
        op.merge("all_out", answers, chatter, handoffs, changes, dead),
        conn,
        settings.output_topics(),
        exactly_once=settings.exactly_once,
        transactional_id_prefix=settings.transactional_id_prefix,
    )
    return flow


def from_env() -> Dataflow:
    """The flow ``SLUICE_*`` variables describe, after checking Kafka, the topics and the device."""
    return flow_from_env(AssistantSettings, build_flow, redis=False)
