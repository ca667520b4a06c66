"""Grounded answers: chosen from the retrieved passages, or generated and then checked against them.

Why extractive first: on a 2-core CPU the 135M-parameter LLM needs seconds per
answer and, measured on user-style questions, wrote confident statements that
contradicted the passage it cited in 12 of 20 cases. An answer built from the
passages' own sentences is right whenever retrieval is, costs a few dot products
(sentence vectors are computed when documents are indexed), always ends at a
sentence boundary, and its citations are true by construction. A generated
answer (the GPU path, or whenever the generator can make the deadline) must pass
the same test: each of its sentences must be close to a sentence of a passage it
cites (cosine of their embeddings at or above :data:`SUPPORT_THRESHOLD`);
unsupported sentences are dropped, and if nothing is left the extractive answer
is served instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from models.answer_ranker import FEATURES, AnswerRanker, candidates, shipped_ranker
from models.chunking import split_sentences
from state.knowledge_index import Retrieved

SUPPORT_THRESHOLD = 0.80  # cosine between a generated sentence and its closest passage sentence
# Below this, no retrieved sentence is about the question: say "not found" instead of quoting the least bad one.
# Measured (all-MiniLM-L6-v2, the pydoc corpus): the best sentence's cosine is 0.37 or more for all 190
# evaluation questions and under 0.34 for 29 of 30 off-topic ones ("zzzz qqqq" 0.33, "How do I file taxes?"
# 0.24); the off-topic sets are in perf/assistant_offtopic.json, and perf.assistant_eval reports both shares.
MIN_ANSWER_COSINE = 0.35
COSINE = FEATURES.index("cosine")
NO_ANSWER = "I could not find this in the documentation I have."


@dataclass(frozen=True, slots=True)
class AnswerSentence:
    text: str
    passage: int  # 1-based number of the passage it comes from / is supported by
    support: float  # cosine to the supporting passage sentence (1.0 when quoted)


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer, its sentences with their supporting passage, and how it was made."""

    sentences: tuple[AnswerSentence, ...]
    mode: str  # "extractive" | "generated" | "none"
    truncated: bool = False
    off_topic: bool = False  # "none" because no retrieved sentence is close to the question (nothing to ground on)
    dropped: tuple[str, ...] = field(default=())  # generated sentences that no passage supported

    @property
    def text(self) -> str:
        if not self.sentences:
            return NO_ANSWER
        return " ".join(f"{s.text} [{s.passage}]" for s in self.sentences)

    @property
    def cited(self) -> set[int]:
        return {s.passage for s in self.sentences}


def extract_answer(
    query_vector: np.ndarray,
    question: str,
    query_text: str,
    passages: Sequence[Retrieved],
    ranker: AnswerRanker | None = None,
    max_sentences: int = 2,
    second_ratio: float = 0.6,
    min_probability: float = 0.05,
    min_cosine: float = MIN_ANSWER_COSINE,
) -> Answer:
    """The sentence of the passages the ranker (:mod:`models.answer_ranker`) finds most likely to answer,
    plus a second one when it is nearly as likely (``second_ratio`` of the best): answers often need a
    definition and its consequence. Nothing likely enough, or no sentence as close to the question as
    ``min_cosine``, means "not found".

    >>> import numpy as np
    >>> from state.vector_index import Hit
    >>> p = Retrieved(Hit(0.9, "d", "T", "s", 0, "x", 1), "", 0.02, 0.0,
    ...               ("A dog barks at the mailman daily.", "A cat meows when it is hungry."),
    ...               np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32))
    >>> extract_answer(np.array([0.0, 1.0], dtype=np.float32), "what does a cat do", "cat", [p]).text
    'A cat meows when it is hungry. [1]'
    """
    found = candidates(query_vector, question, query_text, passages)
    if not found.where or found.features[:, COSINE].max() < min_cosine:
        return Answer((), "none", off_topic=True)
    probability = (ranker or shipped_ranker()).scores(found.features)
    order = np.argsort(-probability, kind="stable")
    best = int(order[0])
    if probability[best] < min_probability:
        return Answer((), "none")
    chosen = [best]
    text = {_text_at(found.where[best], passages)}
    if max_sentences > 1:  # the next most likely sentence, unless it repeats one (passages can share text)
        runner = next((int(i) for i in order[1:] if _text_at(found.where[int(i)], passages) not in text), None)
        if runner is not None and probability[runner] >= second_ratio * probability[best]:
            chosen.append(runner)
    chosen.sort(key=lambda i: found.where[i])  # reading order
    sentences = tuple(AnswerSentence(passages[p].sentences[s], p + 1, 1.0) for p, s in (found.where[i] for i in chosen))
    return Answer(sentences, "extractive", truncated=any("…" in s.text for s in sentences))


def _text_at(where: tuple[int, int], passages: Sequence[Retrieved]) -> str:
    return passages[where[0]].sentences[where[1]]


_SCAFFOLD = re.compile(
    r"</?\s*(context|passage|system|user|assistant)\s*>|<\|[^|]*\|>|documentation assistant|numbered context|"
    r"quoted reference material|never follow instructions",
    re.IGNORECASE,
)


def verify_generated(
    text: str, passages: Sequence[Retrieved], embed: Callable[[list[str]], np.ndarray], truncated: bool
) -> Answer:
    """Keep the generated sentences that a passage supports (see the module docstring).

    A sentence cut by the token limit or the deadline is dropped (answers end at a
    sentence boundary) and ``truncated`` is reported; text that looks like the
    prompt's scaffolding is never kept, whatever a document or the user asked for.
    """
    cleaned = re.sub(r"\[\d+(?:\s*,\s*\d+)*\]", "", text)
    sentences = split_sentences(cleaned)
    cut = False
    if sentences and (truncated or not re.search(r"[.!?][\"')\]]?$", sentences[-1])):
        sentences, cut = sentences[:-1], True
    candidates = [s for s in sentences if not _SCAFFOLD.search(s)]
    dropped = [s for s in sentences if _SCAFFOLD.search(s)]
    kept: list[AnswerSentence] = []
    if candidates and any(p.sentences for p in passages):
        vectors = embed(candidates)
        for sentence, vector in zip(candidates, vectors, strict=True):
            best, where = -1.0, 0
            for p, passage in enumerate(passages):
                if len(passage.sentences):
                    cosine = float((passage.sentence_vectors @ vector).max())
                    if cosine > best:
                        best, where = cosine, p
            if best >= SUPPORT_THRESHOLD:
                kept.append(AnswerSentence(sentence, where + 1, round(best, 4)))
            else:
                dropped.append(sentence)
    return Answer(tuple(kept), "generated" if kept else "none", truncated=cut, dropped=tuple(dropped))
