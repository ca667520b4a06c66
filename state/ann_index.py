"""An approximate nearest-neighbour index of items: versioned upserts and deletes, fast at 100k-1M items.

Items are unit vectors searched by inner product (cosine). The index starts
exact (faiss ``IndexFlatIP`` behind an id map) and, once it holds ``train_at``
items (10,000 by default), trains an inverted-file index (``IndexIVFScalarQuantizer``
with fp16 vectors: at most ``nlist`` k-means cells, and at least 39 held items
per cell, as faiss wants; ``nprobe`` of them scanned per query) on what it
holds and moves every vector there. fp16 instead of fp32 lists (2026-11-30,
100,000 clustered 384-d unit vectors, nprobe 24, batches of 64, one core):
4,000 -> 6,500 queries/s at recall@10 0.9985 against exact (fp32 lists 0.9999);
on the shop's real vectors ANN recall@10 0.9937 -> 0.9933. Search was half of
the personalization flow's CPU under load. 8-bit codes were faster still
(7,400/s) but lost 2% recall that no ``nprobe`` recovers. Why IVF and not HNSW (measured in ``perf/reports/personalize_index.json``,
``python -m perf.personalize_eval index``): faiss HNSW cannot remove vectors, and
a catalogue removes items all the time (deletes, new versions); IVF removes
through a hash-table direct map in microseconds, adds without rebuilding, and a
batch of queries is one call. At the chosen ``nprobe`` recall@10 against exact
search stays above 0.95.

The cells are re-trained when the index has grown ``RETRAIN_GROWTH`` times since
they were trained and could use more of them: trained at 10,000 items, an index
has at most 256 cells, and at 100,000 items each held ~390 vectors, so a query
with ``nprobe`` 24 scanned ~9,400 of them (1.1 ms of a core, 70% of the
personalization flow's CPU under load, 2026-11-30). Re-trained at 40,000 items
with 1,024 cells it scans ~2,300. A re-training blocks the caller for a few
seconds (k-means on up to 64 vectors a cell); it happens at 4x, 16x, ... the
first training size and stops once ``nlist`` cells are in use, so in practice
while a catalogue is first loaded.

Every item has a version: an older upsert or delete than the one held is
ignored, and deletes leave a tombstone so a late upsert cannot resurrect an
item. Labels (faiss ids) are never reused. ``state()`` / ``from_state()``
round-trip the whole index, k-means centroids included (no retraining, the
same answers). When faiss-gpu sees a GPU, searches run on a GPU copy that is
refreshed after changes.
"""

from __future__ import annotations

import numbers
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from state.vector_index import gpu_available

RETRAIN_GROWTH = 4.0  # re-train the cells when the index has grown this many times since the last training


@dataclass(frozen=True, slots=True)
class Change:
    """An upsert (``vector`` set) or a delete (``vector`` None) of one item version; ``payload`` is the caller's."""

    item_id: str
    version: int
    vector: np.ndarray | None
    payload: Hashable = None


class Hits:
    """One query's results, best first, made into (item id, score) pairs only as far as they are read.

    Read again from the start on every iteration; valid until the index next changes. A caller that
    stops early (ranking over-fetched hits, :func:`models.rules.rank` with ``best_first``) never pays
    for the rest: building all ~60 pairs of a request had cost a quarter as much as the search.

    >>> hits = Hits([3, 7, -1], [0.9, 0.5, 0.0], {3: "a", 7: "b"})
    >>> list(hits), next(iter(hits))
    ([('a', 0.9), ('b', 0.5)], ('a', 0.9))
    """

    __slots__ = ("_items", "_labels", "_scores")

    def __init__(self, labels: list[int], scores: list[float], items: dict[int, str]) -> None:
        self._labels, self._scores, self._items = labels, scores, items

    def __iter__(self) -> Iterator[tuple[str, float]]:
        items = self._items
        for label, score in zip(self._labels, self._scores, strict=True):
            if label >= 0:  # faiss pads with -1 when it finds fewer than asked
                yield items[label], score


class AnnIndex:
    """Versioned item vectors; exact search until ``train_at`` items, IVF after.

    >>> idx = AnnIndex(dim=2, nlist=2, train_at=4, use_gpu=False)
    >>> unit = lambda x, y: np.array([x, y], dtype=np.float32) / np.hypot(x, y)
    >>> idx.apply([Change("a", 1, unit(1, 0), "A"), Change("b", 1, unit(0, 1), "B")])
    [True, True]
    >>> [(item, round(score, 3)) for item, score in idx.search(np.stack([unit(1, 0.2)]), k=2)[0]]
    [('a', 0.981), ('b', 0.196)]
    >>> idx.apply([Change("a", 2, None), Change("b", 0, None)]), idx.count, idx.version_of("a")
    ([True, False], 1, 2)
    >>> idx.apply([Change(x, 1, unit(i + 1, 1), None) for i, x in enumerate("cdef")]), idx.trained
    ([True, True, True, True], True)
    """

    def __init__(
        self, dim: int, nlist: int = 1024, nprobe: int = 16, train_at: int | None = None, use_gpu: bool | None = None
    ) -> None:
        self.dim = dim
        self.nlist = nlist  # cells in use (fewer than max_nlist while there are too few items for them)
        self.max_nlist = nlist
        self.trained_count = 0  # items held when the cells were last trained
        self.nprobe = nprobe
        self.train_at = 10_000 if train_at is None else train_at
        self.index: Any = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self.trained = False
        self.labels: dict[str, int] = {}
        self.items: dict[int, str] = {}
        self.versions: dict[str, int] = {}  # indexed items and tombstones alike
        self.payloads: dict[str, Hashable] = {}
        self.next_label = 0
        self.changes = 0  # applied changes: the index version reported with results
        self.use_gpu = gpu_available() if use_gpu is None else use_gpu
        self._gpu: Any = None
        self._gpu_resources: Any = None

    @property
    def count(self) -> int:
        return len(self.labels)

    def version_of(self, item_id: str) -> int | None:
        return self.versions.get(item_id)

    def payload(self, item_id: str) -> Hashable:
        return self.payloads.get(item_id)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.labels

    def apply(self, changes: Sequence[Change]) -> list[bool]:
        """Apply upserts and deletes in order (one faiss remove and one add for the lot); which were applied."""
        applied: list[bool] = []
        final: dict[str, Change] = {}
        for c in changes:
            held = self.versions.get(c.item_id)
            if held is not None and c.version < held:
                applied.append(False)
                continue
            self.versions[c.item_id] = c.version
            final[c.item_id] = c
            applied.append(True)
        if not final:
            return applied
        gone = [self.labels.pop(i) for i in final if i in self.labels]
        if gone:
            self.index.remove_ids(np.asarray(gone, dtype=np.int64))
            for label in gone:
                del self.items[label]
        upserts = [c for c in final.values() if c.vector is not None]
        for c in final.values():
            if c.vector is None:
                self.payloads.pop(c.item_id, None)
        if upserts:
            labels = np.arange(self.next_label, self.next_label + len(upserts), dtype=np.int64)
            self.next_label += len(upserts)
            vectors = np.stack([np.asarray(c.vector, dtype=np.float32) for c in upserts])
            for c, label in zip(upserts, labels.tolist(), strict=True):
                self.labels[c.item_id] = label
                self.items[label] = c.item_id
                self.payloads[c.item_id] = c.payload
            self.index.add_with_ids(np.ascontiguousarray(vectors), labels)
        self.changes += sum(applied)
        self._gpu = None
        if self._training_due():
            self._train()
        return applied

    def _training_due(self) -> bool:
        """First training at ``train_at`` items; again after ``RETRAIN_GROWTH``x growth while more cells fit."""
        if not self.trained:
            return self.count >= self.train_at
        return self.nlist < self.max_nlist and self.count >= RETRAIN_GROWTH * self.trained_count

    def _vectors(self) -> tuple[np.ndarray, np.ndarray]:
        labels = np.fromiter(self.items, dtype=np.int64, count=len(self.items))
        if not len(labels):
            return labels, np.zeros((0, self.dim), dtype=np.float32)
        return labels, np.stack([self.index.reconstruct(int(label)) for label in labels])

    def _ivf(self, centroids: np.ndarray | None) -> Any:
        if centroids is not None:
            self.nlist = len(centroids)
        quantizer = faiss.IndexFlatIP(self.dim)
        # vectors kept as fp16 in the lists, not residuals: fp16 -> fp32 -> fp16 is exact, so a restored
        # index (state() reconstructs) holds the same codes and gives the same answers
        ivf = faiss.IndexIVFScalarQuantizer(
            quantizer, self.dim, self.nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
        ivf.by_residual = False
        # a hash-table direct map: removes by id without scanning every list (faiss's stubs do not declare DirectMap)
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]
        if centroids is not None:
            quantizer.add(np.ascontiguousarray(centroids, dtype=np.float32))
            ivf.is_trained = True
        ivf.nprobe = min(self.nprobe, self.nlist)
        return ivf

    def _train(self, sample: int = 64) -> None:
        """k-means on (up to ``sample`` x ``nlist``) held vectors, seeded, then move every vector into the IVF."""
        labels, vectors = self._vectors()
        self.nlist = max(1, min(self.max_nlist, len(vectors) // 39))
        self.trained_count = len(vectors)
        rng = np.random.default_rng(1234)
        pick = rng.choice(len(vectors), size=min(len(vectors), sample * self.nlist), replace=False)
        kmeans = faiss.Kmeans(self.dim, self.nlist, niter=12, seed=1234, spherical=True, max_points_per_centroid=sample)
        kmeans.train(np.ascontiguousarray(vectors[np.sort(pick)]))
        ivf = self._ivf(kmeans.centroids)
        ivf.add_with_ids(np.ascontiguousarray(vectors), labels)
        self.index, self.trained, self._gpu = ivf, True, None

    def set_nprobe(self, nprobe: int) -> None:
        self.nprobe = nprobe
        if self.trained:
            self.index.nprobe = min(nprobe, self.nlist)
        self._gpu = None

    def _searcher(self) -> Any:
        if not self.use_gpu:
            return self.index
        if self._gpu is None:
            if self._gpu_resources is None:
                self._gpu_resources = faiss.StandardGpuResources()
            self._gpu = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self.index)
        return self._gpu

    def search(self, queries: np.ndarray, k: int | Sequence[int]) -> list[list[tuple[str, float]]]:
        """The ``k`` nearest items of each query row, best first, as (item id, inner product).

        ``k`` may be one per row: the batch is one faiss call for the largest, and each row keeps its own.
        """
        return [list(hits) for hits in self.search_hits(queries, k)]

    def search_hits(self, queries: np.ndarray, k: int | Sequence[int]) -> list[Hits]:
        """:meth:`search`, each row's pairs made only as they are read (:class:`Hits`)."""
        if len(queries) == 0:
            return []
        per_row = [k] * len(queries) if isinstance(k, (int, numbers.Integral)) else list(k)  # numpy ints too
        wants = [max(0, int(n)) for n in per_row]
        if len(wants) != len(queries):
            raise ValueError(f"{len(wants)} values of k for {len(queries)} queries")
        most = min(max(wants), self.count)
        if most < 1:
            return [Hits([], [], self.items) for _ in range(len(queries))]
        scores, labels = self._searcher().search(np.ascontiguousarray(queries, dtype=np.float32), most)
        return [
            Hits(row_labels[:n], row_scores[:n], self.items)
            for row_labels, row_scores, n in zip(labels.tolist(), scores.tolist(), wants, strict=True)
        ]

    def state(self) -> dict[str, Any]:
        """Everything needed to rebuild this index (vectors, versions, tombstones, payloads, centroids)."""
        labels, vectors = self._vectors()
        centroids = None
        if self.trained:
            quantizer = faiss.downcast_index(self.index.quantizer)
            centroids = quantizer.reconstruct_n(0, quantizer.ntotal)
        return {
            "dim": self.dim,
            "nlist": self.nlist,
            "max_nlist": self.max_nlist,
            "trained_count": self.trained_count,
            "nprobe": self.nprobe,
            "train_at": self.train_at,
            "centroids": centroids,
            "labels": labels,
            "vectors": vectors,
            "items": [self.items[int(label)] for label in labels],
            "versions": dict(self.versions),
            "payloads": dict(self.payloads),
            "next_label": self.next_label,
            "changes": self.changes,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], use_gpu: bool | None = None) -> AnnIndex:
        """The index :meth:`state` describes."""
        idx = cls(state["dim"], state["nlist"], state["nprobe"], state["train_at"], use_gpu)
        idx.max_nlist = state.get("max_nlist", state["nlist"])  # snapshots before re-training kept only nlist
        # older snapshots: cells are trained on at least 39 items each, so nlist x 39 is when they were
        idx.trained_count = state.get("trained_count", state["nlist"] * 39)
        if state["centroids"] is not None:
            idx.index, idx.trained = idx._ivf(state["centroids"]), True
        if len(state["labels"]):
            idx.index.add_with_ids(np.ascontiguousarray(state["vectors"], dtype=np.float32), state["labels"])
        idx.items = {int(label): item for label, item in zip(state["labels"].tolist(), state["items"], strict=True)}
        idx.labels = {item: label for label, item in idx.items.items()}
        idx.versions = dict(state["versions"])
        idx.payloads = dict(state["payloads"])
        idx.next_label = state["next_label"]
        idx.changes = state["changes"]
        return idx
