"""Which passage sentence answers the question: a small learned ranker over cheap features.

Hand-set weights (cosine + word overlap + rank) picked the sentence holding the
answer first for only half of the questions where it was retrieved at all. The
ranker is a logistic regression over features that cost nothing at query time
(sentence vectors are computed when documents are indexed): the sentence's
cosine to the question, absolute and relative to the best sentence, its share of
the question's rare terms, its passage's rank and scores, where it sits in its
passage, its length and form, and whether its wording fits the question's kind
("because" for why-questions, "can"/"cannot" for can-I questions, ...).

It is fitted on the evaluation questions' reference passages (a sentence is a
positive when it quotes the passage that answers the question) by
``python -m perf.assistant_eval --fit-ranker``, which reports the answer quality
of out-of-fold predictions only (5-fold cross-validation: no question is answered
by a ranker that saw it), then saves the weights fitted on all questions to
``models/answer_ranker.json`` (eleven numbers, shipped with the code).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from state.knowledge_index import Retrieved
from state.lexical_index import terms

WEIGHTS_PATH = Path(__file__).resolve().parent / "answer_ranker.json"
FEATURES = (
    "cosine",
    "cosine_gap_to_best",
    "rare_term_share",
    "passage_rank",
    "passage_fused",
    "passage_cosine",
    "position_in_passage",
    "words",
    "not_prose",
    "fits_question_kind",
)
_NOT_PROSE = re.compile(
    r"::=|^\*\*PEP|^\[\d+\]|^(object|class|def)\b.*\)$|^>>>|^See also\b|^Changed in version|^Added in version"
)
_KIND_CUES = (
    (re.compile(r"^\s*why\b", re.I), re.compile(r"\b(because|since|so that|in order|otherwise|reason)\b", re.I)),
    (
        re.compile(r"^\s*(can|could|may|is it possible|am i allowed)\b", re.I),
        re.compile(r"\b(can|cannot|can't|may|must|only|not|allowed|possible)\b", re.I),
    ),
    (re.compile(r"^\s*how\b", re.I), re.compile(r"\b(use|call|define|write|pass|set|implement|by)\b", re.I)),
    (
        re.compile(r"^\s*(what happens|what if|if)\b", re.I),
        re.compile(r"\b(raise[sd]?|error|exception|is|are|becomes|returns?)\b", re.I),
    ),
)


@functools.lru_cache(maxsize=1 << 16)  # the index's own sentences come back turn after turn
def not_prose(sentence: str) -> float:
    """1 for grammar productions, code, signatures, PEP references, lead-ins ending with a colon, fragments.

    >>> not_prose('The "if" statement is used for conditional execution:'), not_prose("It returns None when nothing matches.")
    (1.0, 0.0)
    """
    text = sentence.strip()
    if _NOT_PROSE.search(text):
        return 1.0
    letters = sum(c.isalpha() or c.isspace() for c in text)
    if letters < 0.75 * len(text) or text.endswith(":") or len(text.split()) < 5:
        return 1.0
    return 0.0


@functools.lru_cache(maxsize=1 << 16)
def sentence_terms(sentence: str) -> frozenset[str]:
    """A passage sentence's BM25 terms (cached like :func:`not_prose`: both cost more than the scoring)."""
    return frozenset(terms(sentence))


def fits_question_kind(question: str, sentence: str) -> float:
    """1 when the sentence has the wording an answer to this kind of question usually has."""
    for asks, answers in _KIND_CUES:
        if asks.search(question):
            return 1.0 if answers.search(sentence) else 0.0
    return 0.0


@dataclass(frozen=True, slots=True)
class Candidates:
    """Every sentence of the passages with its features: ``where[i]`` is (passage index, sentence index)."""

    features: np.ndarray
    where: list[tuple[int, int]]


def candidates(query_vector: np.ndarray, question: str, query_text: str, passages: Sequence[Retrieved]) -> Candidates:
    weights = (
        dict(passages[0].query_terms) if passages and passages[0].query_terms else {t: 1.0 for t in terms(query_text)}
    )
    total = sum(weights.values())
    rows: list[list[float]] = []
    where: list[tuple[int, int]] = []
    cosines_all = [p.sentence_vectors @ query_vector for p in passages]
    best = max((float(c.max()) for c in cosines_all if len(c)), default=0.0)
    for p, (passage, cosines) in enumerate(zip(passages, cosines_all, strict=True)):
        for s, (sentence, cosine) in enumerate(zip(passage.sentences, cosines.tolist(), strict=True)):
            found = sentence_terms(sentence)
            rows.append(
                [
                    cosine,
                    best - cosine,
                    sum(w for t, w in weights.items() if t in found) / total if total else 0.0,
                    float(p),
                    passage.fused * 60.0,
                    passage.hit.score,
                    min(s, 10) / 10.0,
                    min(len(sentence.split()), 80) / 40.0,
                    not_prose(sentence),
                    fits_question_kind(question, sentence),
                ]
            )
            where.append((p, s))
    return Candidates(np.asarray(rows, dtype=np.float64).reshape(-1, len(FEATURES)), where)


@dataclass(frozen=True)
class AnswerRanker:
    """``sigmoid(features @ weights + bias)``: how likely a sentence is the answer."""

    weights: np.ndarray
    bias: float

    def scores(self, features: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-(features @ self.weights + self.bias)))

    def to_json(self) -> str:
        return json.dumps(
            {"features": list(FEATURES), "weights": self.weights.round(6).tolist(), "bias": round(self.bias, 6)},
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> AnswerRanker:
        data = json.loads(text)
        if data["features"] != list(FEATURES):
            raise ValueError("the answer ranker's weights were fitted on other features: refit it")
        return cls(np.asarray(data["weights"], dtype=np.float64), float(data["bias"]))


# Before any fit: the hand-set weights this ranker replaced (cosine, rare terms, rank, prose).
HAND_SET = AnswerRanker(np.array([4.0, 0.0, 1.0, -0.2, 0.0, 0.0, 0.0, 0.0, -1.6, 0.0]), -2.0)


@functools.cache
def shipped_ranker() -> AnswerRanker:
    """The fitted ranker shipped in ``models/answer_ranker.json`` (the hand-set one if it is missing)."""
    return AnswerRanker.from_json(WEIGHTS_PATH.read_text()) if WEIGHTS_PATH.exists() else HAND_SET
