"""Answer quality of the assistant on user-style questions: ``python -m perf.assistant_eval``.

Runs exactly what the flow serves, offline: the corpus indexed by
:class:`models.knowledge.DocumentKnowledge` (same chunking, encoder, hybrid
ranking), conversations resolved by :func:`models.prompting.resolve_query` with
the same memory entries the flow keeps, passages redacted and answered by
:func:`models.answering.extract_answer` (or, with ``--mode generate``, by the
LLM and :func:`models.answering.verify_generated`).

The question set (``perf/assistant_eval.json``, 190 questions written the way
people ask: how / why / can-I / what-if / comparisons / behaviour / follow-ups of
1-3 earlier turns) gives each question its relevant documents, a reference
passage, a reference answer and key terms. Reported: retrieval recall@1/@3/@10
and MRR@10; answer correctness by an automatic judge; citation precision (cited
passages that come from a relevant document); truncation.

The judge calls an answer correct when it quotes the reference passage's answer
sentence (a share of that sentence's words at least ``quoted``), or when it says
the same as the reference answer (embedding cosine at least ``cosine``) and names
at least half of the key terms. The two thresholds are fitted to hand labels on
30 answers (``perf/assistant_eval_labels.json``, labelled by reading each answer
against the passage, each kept with the answer text that was read); every run
judges those labelled texts, fits the rule to them and reports its agreement, so
the rule does not move when the answers to the same questions change.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.answer_ranker import WEIGHTS_PATH, AnswerRanker, candidates
from models.answering import NO_ANSWER, Answer, extract_answer, verify_generated
from models.chunking import split_sentences
from models.knowledge import DocumentKnowledge
from models.prompting import Remembered, build_messages, prompt_context, redact, resolve_query
from models.text_encoder import TextEncoder, shared_encoder
from perf.summary import REPORTS, record
from sluice.local.corpus import load_corpus
from sluice.settings import AssistantSettings
from state.knowledge_index import Retrieved

DEFAULTS = AssistantSettings()  # what the flow serves unless configured otherwise
QUESTIONS = Path(__file__).resolve().parent / "assistant_eval.json"
LABELS = Path(__file__).resolve().parent / "assistant_eval_labels.json"
OFFTOPIC = Path(__file__).resolve().parent / "assistant_offtopic.json"
STOP = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "to",
        "and",
        "or",
        "in",
        "is",
        "are",
        "be",
        "by",
        "for",
        "on",
        "as",
        "it",
        "its",
        "this",
        "that",
        "with",
        "from",
        "at",
        "if",
    ]
)


@dataclass(frozen=True)
class JudgeRule:
    quoted: float = 0.7
    cosine: float = 0.6


@dataclass(frozen=True)
class Verdict:
    correct: bool
    cosine: float
    key_terms: float
    quoted: float


@dataclass
class Query:
    """What the index needs of a query (the flow's Turn has the same two fields)."""

    query: str
    vector: np.ndarray | None


@dataclass
class Result:
    qid: str
    kind: str
    question: str
    query: str
    docs: list[str]  # top-10 documents, best first
    answer: Answer
    cited_docs: list[str]
    relevant: list[str]
    passages: list[Retrieved]


def build_knowledge(encoder: TextEncoder, top_k: int) -> tuple[DocumentKnowledge, float]:
    started = time.perf_counter()
    kb = DocumentKnowledge(encoder, top_k=top_k)
    kb.apply(load_corpus())
    return kb, time.perf_counter() - started


def ask(kb: DocumentKnowledge, encoder: TextEncoder, item: dict[str, Any], k: int) -> tuple[Query, list[Retrieved]]:
    """Resolve the question against its conversation exactly as the flow's memory step does, then search."""
    history: list[Remembered] = []
    for earlier in item["conversation"]:
        query, vector, follow = resolve_query(earlier, encoder.encode([earlier])[0], history)
        assert vector is not None
        history.append(Remembered("user", earlier, query, follow, vector))
        passages = kb.answer([Query(query, vector)])[0]
        answer = extract_answer(vector, earlier, query, [redact(p)[0] for p in passages])
        history.append(Remembered("assistant", answer.text))
    vec = encoder.encode([item["question"]])[0]
    query, vector, _ = resolve_query(item["question"], vec, history)
    kb.top_k = k
    return Query(query, vector), kb.answer([Query(query, vector)])[0]


def quoted_share(answer_text: str, passage: str) -> float:
    """The largest share of one reference-passage sentence's words that the answer contains
    (an answer that quotes the sentence holding the answer scores 1)."""
    answer_words = set(re.findall(r"[a-z0-9_]+", answer_text.lower()))
    best = 0.0
    for sentence in split_sentences(passage):
        words = set(re.findall(r"[a-z0-9_]+", sentence.lower())) - STOP
        if len(words) >= 4:
            best = max(best, len(words & answer_words) / len(words))
    return best


def judge(answer_text: str, item: dict[str, Any], encoder: TextEncoder, rule: JudgeRule) -> Verdict:
    """Correct when the answer quotes the reference passage's answer sentence (``quoted``), or says the same as
    the reference answer (``cosine``) while naming at least half of its key terms."""
    text = answer_text.lower()
    key_terms = [t.lower() for t in item["key_terms"]]
    coverage = sum(t in text for t in key_terms) / len(key_terms) if key_terms else 1.0
    vectors = encoder.encode([answer_text, item["reference_answer"]])
    cosine = float(vectors[0] @ vectors[1])
    quoted = quoted_share(answer_text, item["reference_passage"])
    correct = quoted >= rule.quoted or (cosine >= rule.cosine and coverage >= 0.5)
    return Verdict(correct, round(cosine, 3), round(coverage, 2), round(quoted, 2))


@dataclass
class Asked:
    """A question after retrieval: what the answer step gets."""

    item: dict[str, Any]
    query: Query
    top10: list[Retrieved]
    passages: list[Retrieved]  # the top k, instruction-like sentences removed

    @property
    def vector(self) -> np.ndarray:
        assert self.query.vector is not None
        return self.query.vector


def answer_with(a: Asked, ranker: AnswerRanker | None, args: argparse.Namespace, encoder: TextEncoder) -> Answer:
    answer = extract_answer(a.vector, a.item["question"], a.query.query, a.passages, ranker)
    if args.mode == "generate" and not answer.off_topic:  # as the flow: nothing relevant, nothing generated
        from models.llm import shared_generator

        gen = shared_generator("cpu")
        prompt = build_messages(
            a.item["question"], [], prompt_context(a.passages, answer.cited, DEFAULTS.prompt_passages)
        )
        out = gen.generate([prompt], args.max_new_tokens)[0]
        checked = verify_generated(out.text, a.passages, encoder.encode, out.truncated)
        answer = checked if checked.sentences else answer
    return answer


def fit_ranker(asked: list[Asked], folds: int = 5) -> tuple[AnswerRanker, dict[str, AnswerRanker]]:
    """The ranker fitted on every question, and for each question one fitted without its fold."""
    from sklearn.linear_model import LogisticRegression

    data = []
    for a in asked:
        found = candidates(a.vector, a.item["question"], a.query.query, a.passages)
        labels = np.array(
            [quoted_share(a.passages[p].sentences[s], a.item["reference_passage"]) >= 0.7 for p, s in found.where],
            dtype=float,
        )
        data.append((found.features, labels))

    def fit(rows: list[int]) -> AnswerRanker:
        x = np.concatenate([data[i][0] for i in rows])
        y = np.concatenate([data[i][1] for i in rows])
        model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=2000).fit(x, y)
        return AnswerRanker(model.coef_[0].astype(np.float64), float(model.intercept_[0]))

    order = np.random.default_rng(7).permutation(len(asked))
    out_of_fold: dict[str, AnswerRanker] = {}
    for f in range(folds):
        held = set(order[f::folds].tolist())
        ranker = fit([i for i in range(len(asked)) if i not in held])
        out_of_fold.update({asked[i].item["id"]: ranker for i in held})
    return fit(list(range(len(asked)))), out_of_fold


def batch_independence(encoder: TextEncoder, questions: list[str], others: int = 64) -> float:
    """The smallest cosine between a question embedded alone and the same question inside a batch of
    ``others`` other texts (1.0: the batch changes nothing)."""
    rng = np.random.default_rng(11)
    pool = [q for q in questions]
    worst = 1.0
    for question in questions[:50]:
        batch = [pool[int(i)] for i in rng.integers(0, len(pool), others)]
        at = int(rng.integers(0, others))
        together = encoder.encode([*batch[:at], question, *batch[at:]])[at]
        worst = min(worst, float(encoder.encode([question])[0] @ together))
    return worst


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    encoder = shared_encoder("cpu", int8=args.int8)
    fp32 = shared_encoder("cpu", int8=False, bf16=False)  # the judge always uses the full-precision encoder
    kb, index_s = build_knowledge(encoder, args.top_k)
    questions = json.loads(QUESTIONS.read_text())[: args.limit or None]
    asked = []
    for item in questions:
        query, top10 = ask(kb, encoder, item, 10)
        asked.append(Asked(item, query, top10, [redact(p)[0] for p in top10[: args.top_k]]))
    rankers: dict[str, AnswerRanker | None] = {a.item["id"]: None for a in asked}
    if args.fit_ranker:
        fitted, out_of_fold = fit_ranker(asked)
        WEIGHTS_PATH.write_text(fitted.to_json() + "\n")
        print(f"answer ranker fitted on {len(asked)} questions -> {WEIGHTS_PATH}")
        rankers.update(out_of_fold)  # the report scores only answers from rankers that did not see the question
    results = []
    for a in asked:
        answer = answer_with(a, rankers[a.item["id"]], args, encoder)
        cited = [a.passages[s.passage - 1].hit.doc_id for s in answer.sentences]
        item = a.item
        results.append(
            Result(
                item["id"],
                item["kind"],
                item["question"],
                a.query.query,
                [p.hit.doc_id for p in a.top10],
                answer,
                cited,
                item["relevant"],
                a.passages,
            )
        )
    report = summarize(results, questions, index_s, args, fp32)
    report["batch_embedding_min_cosine"] = round(batch_independence(encoder, [q["question"] for q in questions]), 6)
    offtopic = json.loads(OFFTOPIC.read_text())
    for part, key in (("held_out", "offtopic_refused_share"), ("chosen_on", "offtopic_refused_share_chosen_on")):
        answers = off_topic_answers(kb, encoder, offtopic[part], args)
        report[key] = round(sum(a == NO_ANSWER for a in answers.values()) / len(answers), 4)
        report[f"offtopic_answered_{part}"] = {q: a for q, a in answers.items() if a != NO_ANSWER}
    return report


def off_topic_answers(
    kb: DocumentKnowledge, encoder: TextEncoder, questions: list[str], args: argparse.Namespace
) -> dict[str, str]:
    """What the assistant answers to ``questions``, none of which the documentation answers ("not found" is right)."""
    out = {}
    for text in questions:
        query, top = ask(kb, encoder, {"question": text, "conversation": []}, args.top_k)
        out[text] = answer_with(
            Asked({"question": text}, query, top, [redact(p)[0] for p in top]), None, args, encoder
        ).text
    return out


def calibrate(verdicts: dict[str, Verdict], labels: dict[str, Any]) -> tuple[JudgeRule, float]:
    """The rule (thresholds) that agrees best with the hand labels, and that agreement."""
    labelled = [q for q in labels if q in verdicts]
    if not labelled:
        return JudgeRule(), 0.0
    best: tuple[float, float, float] = (-1.0, 0.0, 0.0)
    for quoted in np.arange(0.4, 1.01, 0.05):
        for cosine in np.arange(0.4, 0.91, 0.02):
            agree = sum(
                ((verdicts[q].quoted >= quoted) or (verdicts[q].cosine >= cosine and verdicts[q].key_terms >= 0.5))
                == bool(labels[q]["correct"])
                for q in labelled
            )
            best = max(best, (agree / len(labelled), -round(float(quoted), 2), round(float(cosine), 2)))
    return JudgeRule(-best[1], best[2]), best[0]


def summarize(
    results: list[Result],
    questions: list[dict[str, Any]],
    index_s: float,
    args: argparse.Namespace,
    encoder: TextEncoder,
) -> dict[str, Any]:
    labels: dict[str, Any] = json.loads(LABELS.read_text()) if LABELS.exists() else {}
    items = {q["id"]: q for q in questions}
    # The judge is calibrated on the answers a person read, not on today's answers to the same questions:
    # once the ranker or retrieval changes, an answer differs from the one its label is about.
    labelled_verdicts = {
        q: judge(label["answer"], items[q], encoder, JudgeRule()) for q, label in labels.items() if q in items
    }
    rule, agreement = calibrate(labelled_verdicts, labels)
    verdicts = {r.qid: judge(r.answer.text, items[r.qid], encoder, rule) for r in results}
    labelled = list(labelled_verdicts)

    def hit_at(r: Result, k: int) -> bool:
        return any(d in r.relevant for d in r.docs[:k])

    def rank(r: Result) -> float:
        return next((1.0 / (i + 1) for i, d in enumerate(r.docs) if d in r.relevant), 0.0)

    n = len(results)
    cited = [d for r in results for d in r.cited_docs]
    by_kind: dict[str, list[Result]] = {}
    for r in results:
        by_kind.setdefault(r.kind, []).append(r)

    def unmarked(r: Result) -> bool:
        """Text cut somewhere (not a whole unit of its passage, not a finished generated sentence) while
        ``truncated`` says it was not."""
        if r.answer.truncated or not r.answer.sentences:
            return False
        if r.answer.mode == "extractive":
            units = {u for p in r.passages for u in p.sentences}
            return any(s.text not in units or s.text.endswith("…") for s in r.answer.sentences)
        return not r.answer.sentences[-1].text.rstrip().endswith((".", "!", "?", ")", '"', "'", "”", "’"))

    unmarked_count = sum(unmarked(r) for r in results)
    return {
        "benchmark": "assistant_eval",
        "command": "python -m perf.assistant_eval " + " ".join(sys.argv[1:]),
        "encoder": shared_encoder("cpu", int8=args.int8).precision,  # what the flow serves on this CPU
        "answer_ranker": "out-of-fold (5-fold)" if args.fit_ranker else "shipped",
        "top_k": args.top_k,
        "answer_mode": args.mode,
        "questions": n,
        "index_build_s": round(index_s, 1),
        "recall_at_1": round(sum(hit_at(r, 1) for r in results) / n, 4),
        "recall_at_3": round(sum(hit_at(r, 3) for r in results) / n, 4),
        "recall_at_10": round(sum(hit_at(r, 10) for r in results) / n, 4),
        "mrr_at_10": round(sum(rank(r) for r in results) / n, 4),
        "answer_correct_share": round(sum(verdicts[r.qid].correct for r in results) / n, 4),
        "citation_precision": round(
            sum(d in r.relevant for r in results for d in r.cited_docs) / max(1, len(cited)), 4
        ),
        "answered_share": round(sum(bool(r.answer.sentences) for r in results) / n, 4),
        "truncated_share": round(sum(r.answer.truncated for r in results) / n, 4),
        "unmarked_truncations": unmarked_count,
        "judge_rule": {"quoted_at_least": rule.quoted, "or_cosine_at_least": rule.cosine, "with_key_terms": 0.5},
        "judge_agreement": round(agreement, 4),
        "judge_labels": len(labelled),
        "by_kind": {
            kind: {
                "questions": len(rs),
                "recall_at_3": round(sum(hit_at(r, 3) for r in rs) / len(rs), 3),
                "answer_correct_share": round(sum(verdicts[r.qid].correct for r in rs) / len(rs), 3),
            }
            for kind, rs in sorted(by_kind.items())
        },
        "answers": [
            {
                "id": r.qid,
                "question": r.question,
                "query": r.query,
                "top3": r.docs[:3],
                "relevant": r.relevant,
                "answer": r.answer.text,
                **asdict(verdicts[r.qid]),
            }
            for r in results
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["extractive", "generate"], default="extractive")
    parser.add_argument("--int8", action="store_true", help="the row-wise int8 encoder instead of full precision")
    parser.add_argument("--top-k", type=int, default=DEFAULTS.top_k, help="passages answers are chosen from")
    parser.add_argument("--limit", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument(
        "--fit-ranker",
        action="store_true",
        help="fit the answer ranker on the question set (5-fold out-of-fold answers are what is reported) and save it",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    report = run(args)
    name = f"assistant_eval-{args.mode}{'-int8' if args.int8 else ''}.json"
    (args.out or REPORTS / name).write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "answers"}, indent=1))
    if not args.fit_ranker:  # the shipped ranker was fitted on these very questions: an in-sample figure
        print("summary untouched: only a --fit-ranker run (answers from out-of-fold rankers) is recorded")
    elif args.mode == "extractive" and not args.int8 and not args.limit and args.top_k == DEFAULTS.top_k:
        record(
            "assistant",
            {
                "eval_questions": report["questions"],
                "recall_at_3": report["recall_at_3"],
                "answer_correct_share": report["answer_correct_share"],
                "judge_agreement": report["judge_agreement"],
                "citation_precision": report["citation_precision"],
                "unmarked_truncations": report["unmarked_truncations"],
                "answered_share": report["answered_share"],
                "offtopic_refused_share": report["offtopic_refused_share"],
                "batch_embedding_min_cosine": report["batch_embedding_min_cosine"],
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
