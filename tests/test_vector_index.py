import numpy as np
import pytest

from state.vector_index import VectorIndex


def _unit(*rows):
    v = np.array(rows, dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture()
def index():
    idx = VectorIndex(dim=3, use_gpu=False)
    idx.upsert("a", 1, "A", "t", ["a0", "a1"], _unit([1, 0, 0], [1, 0.1, 0]))
    idx.upsert("b", 1, "B", "t", ["b0"], _unit([0, 1, 0]))
    return idx


def test_new_version_replaces_old_chunks(index):
    assert index.upsert("a", 2, "A2", "t", ["new"], _unit([0, 0, 1]))
    assert index.chunk_count == 2 and index.doc_count == 2
    hits = index.search(_unit([1, 0, 0]), k=5)[0]
    assert {h.text for h in hits} == {"new", "b0"}  # no ghost chunks of version 1
    assert next(h for h in hits if h.doc_id == "a").title == "A2"


def test_stale_versions_and_deletes_are_ignored(index):
    index.upsert("a", 3, "A3", "t", ["v3"], _unit([0, 0, 1]))
    assert not index.upsert("a", 2, "A2", "t", ["v2"], _unit([0, 0, 1]))
    assert not index.delete("a", 2)
    assert index.version_of("a") == 3 and index.chunk_count == 2


def test_delete_removes_and_blocks_older_upserts(index):
    assert index.delete("b", 5)
    assert [h.doc_id for h in index.search(_unit([0, 1, 0]), k=3)[0]] == ["a", "a"]
    assert not index.upsert("b", 4, "B", "t", ["late"], _unit([0, 1, 0]))
    assert index.upsert("b", 6, "B", "t", ["back"], _unit([0, 1, 0]))


def test_state_round_trip_gives_the_same_answers(index):
    index.delete("b", 2)
    index.upsert("c", 1, "C", "t", ["c0", "c1"], _unit([0, 0, 1], [0, 1, 1]))
    copy = VectorIndex.from_state(index.state(), use_gpu=False)
    q = _unit([0.2, 0.3, 1.0], [1, 0, 0])
    assert [[(h.doc_id, h.chunk, h.text) for h in row] for row in copy.search(q, 4)] == [
        [(h.doc_id, h.chunk, h.text) for h in row] for row in index.search(q, 4)
    ]
    assert copy.version_of("b") == 2 and copy.next_id == index.next_id
    # ids are never reused after a restore
    copy.upsert("d", 1, "D", "t", ["d0"], _unit([1, 1, 1]))
    assert max(copy.chunks) == index.next_id


def test_empty_index_and_mismatched_input():
    idx = VectorIndex(dim=3, use_gpu=False)
    assert idx.search(_unit([1, 0, 0]), 3) == [[]]
    with pytest.raises(ValueError):
        idx.upsert("a", 1, "A", "t", ["x", "y"], _unit([1, 0, 0]))
