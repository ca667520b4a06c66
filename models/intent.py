"""Intent routing: knowledge question, human handoff, or small talk.

The classifier is ``rag-intent-classifier``'s logistic-regression head (157
CLINC150 + RAG meta intents) over all-MiniLM-L6-v2 embeddings. It is applied
to the embedding the turn already has, so routing costs no extra model call.
Its intents are folded into three routes; a low-confidence guess is treated as
a knowledge question, the route that still answers the user. The bar for a
handoff is lower (0.35) than for small talk (0.5): a human-request intent on
top is a strong signal, and a missed handoff costs more than a needless one.
"""

from __future__ import annotations

import functools
import importlib.util
import warnings
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np


class Route(StrEnum):
    """Where a turn goes."""

    KNOWLEDGE = "knowledge"
    HANDOFF = "handoff"
    SMALL_TALK = "small_talk"


HANDOFF_INTENTS = frozenset({"connect_to_human", "escalate_issue", "urgent_attention_required", "negative_sentiment"})
SMALL_TALK_INTENTS = frozenset(
    {
        "greeting", "goodbye", "thank_you", "how_old_are_you", "what_is_your_name", "are_you_a_bot",
        "tell_joke", "who_made_you", "what_are_your_hobbies", "where_are_you_from", "do_you_have_pets",
        "meaning_of_life", "fun_fact", "yes", "no", "maybe", "what_can_i_ask_you", "who_do_you_work_for",
        "change_ai_name", "user_name", "repeat",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Intent:
    """The classifier's label and probability, and the route that follows from them."""

    label: str
    confidence: float
    route: Route


def classifier_dir() -> Path:
    """The ``models`` folder of the installed ``rag-intent-classifier`` (found without importing it)."""
    spec = importlib.util.find_spec("rag_intent_classifier")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("rag-intent-classifier is not installed (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class IntentRouter:
    """Classify turn embeddings and map them to routes.

    >>> from models.text_encoder import shared_encoder
    >>> router, enc = shared_intent_router(), shared_encoder()
    >>> [i.route.value for i in router.classify(enc.encode(["hi there!", "I want to talk to a real person"]))]
    ['small_talk', 'handoff']
    """

    def __init__(self, head: str = "LogisticRegression", handoff_at: float = 0.35, small_talk_at: float = 0.5):
        import joblib

        folder = classifier_dir()
        with warnings.catch_warnings():  # pickled with another scikit-learn release; the head is a plain linear model
            warnings.simplefilter("ignore")
            self.model = joblib.load(folder / f"{head}.joblib")
            label_map: dict[str, str] = joblib.load(folder / "label_map.joblib")
        # label_map holds "id -> name" for CLINC intents and "name -> id" for the meta intents
        names = {k: v for k, v in label_map.items() if k.isdigit() and not v.isdigit()}
        names.update({v: k for k, v in label_map.items() if not k.isdigit()})
        self.labels = [names.get(str(c), str(c)) for c in self.model.classes_]
        # A multinomial logistic regression is softmax(x W^T + b): evaluating it with numpy skips
        # scikit-learn's per-call validation, which costs more than the product at small batches.
        self.weights = np.ascontiguousarray(self.model.coef_.T, dtype=np.float32)
        self.bias = np.asarray(self.model.intercept_, dtype=np.float32)
        self.handoff_at = handoff_at
        self.small_talk_at = small_talk_at
        self.name = f"rag-intent-classifier/{head}"

    def route_for(self, label: str, confidence: float) -> Route:
        """The route for a label at a given confidence."""
        if label in HANDOFF_INTENTS and confidence >= self.handoff_at:
            return Route.HANDOFF
        if label in SMALL_TALK_INTENTS and confidence >= self.small_talk_at:
            return Route.SMALL_TALK
        return Route.KNOWLEDGE

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """Class probabilities, one row per embedding (equal to the head's ``predict_proba``)."""
        z = embeddings.astype(np.float32) @ self.weights + self.bias
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def classify(self, embeddings: np.ndarray) -> list[Intent]:
        """One :class:`Intent` per embedding row."""
        if len(embeddings) == 0:
            return []
        probs = self.probabilities(embeddings)
        best = probs.argmax(axis=1)
        out = []
        for row, i in zip(probs, best, strict=True):
            label, conf = self.labels[i], float(row[i])
            out.append(Intent(label, conf, self.route_for(label, conf)))
        return out


@functools.cache
def shared_intent_router() -> IntentRouter:
    """One router per process."""
    return IntentRouter()
