"""BM25 with numpy-compiled postings against the textbook formula, through adds, removals and re-adds."""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from state.lexical_index import LexicalIndex, terms

WORDS = ["with", "statement", "__enter__", "json", "dump", "loads", "heapq", "merge", "//", "class", "yield", "2"]


def textbook_bm25(chunks: dict[int, str], query: str, k1: float = 1.2, b: float = 0.75) -> dict[int, float]:
    """Okapi BM25 score of every matching chunk, term by term and chunk by chunk: the reference."""
    counts = {cid: Counter(terms(text)) for cid, text in chunks.items()}
    n = len(chunks)
    avg = sum(sum(c.values()) for c in counts.values()) / n
    scores: dict[int, float] = {}
    for term in set(terms(query)):
        holders = [cid for cid, c in counts.items() if term in c]
        if not holders:
            continue
        idf = math.log(1.0 + (n - len(holders) + 0.5) / (len(holders) + 0.5))
        for cid in holders:
            tf, length = counts[cid][term], sum(counts[cid].values())
            scores[cid] = scores.get(cid, 0.0) + idf * tf * (k1 + 1.0) / (tf + k1 * (1.0 - b + b * length / avg))
    return scores


# Empty texts and stopwords only: chunks without terms (a document in a script the tokenizer had no words for).
texts = st.lists(st.sampled_from([*WORDS, "the"]), min_size=0, max_size=12).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(
    first=st.dictionaries(st.integers(0, 40), texts, min_size=1, max_size=25),
    removed=st.lists(st.integers(0, 40), max_size=10),
    readded=st.dictionaries(st.integers(0, 40), texts, max_size=8),
    query=st.lists(st.sampled_from(WORDS), min_size=1, max_size=5).map(" ".join),
)
def test_search_agrees_with_the_textbook_formula_after_a_restart_and_any_changes(first, removed, readded, query):
    idx = LexicalIndex()
    chunks = dict(first)
    for cid, text in first.items():
        idx.add(cid, text)
    idx.search(query)  # compile the postings, so the changes below must invalidate them
    idx = LexicalIndex.from_state(idx.state())  # a restart from a checkpoint changes nothing below
    idx.search(query)  # the restored index compiles its own postings: the changes below must invalidate them too
    for cid in removed:
        idx.remove(cid)
        chunks.pop(cid, None)
    for cid, text in readded.items():
        idx.add(cid, text)
        chunks[cid] = text
    got = idx.search(query, k=5)
    want = textbook_bm25(chunks, query) if chunks else {}
    for cid, score in got:  # every score is the textbook's ...
        assert math.isclose(score, want[cid], rel_tol=1e-9)
    best = sorted(want.values(), reverse=True)[:5]  # ... and they are the best five, best first
    assert [round(s, 9) for _, s in got] == [round(s, 9) for s in best]
    ranked = [cid for cid, _ in got]
    assert all(  # ties broken by chunk id
        ranked[i] < ranked[i + 1] for i in range(len(got) - 1) if math.isclose(got[i][1], got[i + 1][1])
    )


def test_state_round_trip_keeps_the_ranking():
    idx = LexicalIndex()
    for cid, text in enumerate(["with statement __enter__", "json dump loads", "with json", "heapq merge"]):
        idx.add(cid, text)
    again = LexicalIndex.from_state(idx.state())
    assert again.search("with json", k=4) == idx.search("with json", k=4)
    assert [cid for cid, _ in idx.search("with json", k=4)] == [2, 0, 1]
