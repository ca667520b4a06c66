"""Offline evaluation of the personalization flow's retrieval: quality and the index's cost.

    python -m perf.personalize_eval quality            # HitRate@10 / NDCG@10 vs popularity and exact search
    python -m perf.personalize_eval index --sizes 100000,1000000   # build time, memory, q/s, recall by index type

**quality**: the generated shop (100,000 items by default, vectors from the disk
cache, see :mod:`models.catalogue_vectors`), each user's interactions folded
into a taste exactly as the flow does (:class:`models.user_taste.Taste`, the
flow's default kind weights and half-life), then top-10 under the flow's
default rules (:func:`models.rules.rank`: seen items and out-of-stock items
excluded) from (a) the IVF index at the flow's settings, (b) exact search,
(c) popularity (decayed counts over the same interactions, as the flow's
cold-start path ranks). The held-out next new item of each user is the truth.
ANN recall@10 compares the raw top-10 of IVF and exact search for the same
user vectors.

**index**: faiss Flat (exact), the AnnIndex's IVF (fp16 lists) at several ``nprobe`` and HNSW32 at
several ``efSearch``, at each size: build time, memory (serialised size), queries
per second on ONE core in batches of 64 user-like queries, recall@10 against
exact. Above 100,000 items the vectors are the cached real ones plus noise
(near-duplicates of real items), so cluster structure is kept.

Figures go to ``perf/reports/personalize_quality.json`` /
``personalize_index.json`` and, for quality, ``summary.json`` (``personalize``).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from typing import Any, cast

import faiss
import numpy as np
import orjson

from models.rules import Candidate, RuleSet, Shopper, rank
from models.synthetic_shopping import HOUR_MS
from models.user_taste import Taste, parse_kind_weights
from perf.summary import MIN_RUNS, REPORTS, changed_options, record_unless, why_not_recorded
from sluice.local.shopping import catalogue_vectors, make_shop
from sluice.settings import PersonalizeSettings
from state.ann_index import AnnIndex, Change
from state.top_counts import DecayedCounts

K = 10


def _tastes(
    shop: Any, vectors: np.ndarray, per_user: int, end_ms: float, settings: PersonalizeSettings
) -> tuple[dict[str, Taste], DecayedCounts]:
    """Every user's taste and the overall popularity, folded from the generated interactions as the flow folds them."""
    popularity = DecayedCounts(settings.popularity_half_life_s, capacity=5 * settings.popularity_top_n)
    weights = parse_kind_weights(settings.kind_weights)
    row = {it.item_id: n for n, it in enumerate(shop.items)}
    tastes: dict[str, Taste] = {}
    for n, e in enumerate(shop.simulation.interactions(per_user, end_ms, 48 * HOUR_MS)):
        i = row[e.item_id]
        taste = tastes.setdefault(
            e.user_id, Taste(vectors.shape[1], settings.taste_half_life_h * HOUR_MS, settings.max_seen)
        )
        taste.add(
            e.item_id, vectors[i], shop.items[i].category, shop.items[i].price, weights[e.kind], e.event_time_ms, n
        )
        popularity.add(e.item_id, weights[e.kind], e.event_time_ms / 1000.0)
    return tastes, popularity


def _index(vectors: np.ndarray, items: list[Any], nlist: int, nprobe: int, exact: bool) -> AnnIndex:
    idx = AnnIndex(vectors.shape[1], nlist, nprobe, train_at=10**12 if exact else None, use_gpu=False)
    changes = [
        Change(it.item_id, it.version, vectors[n], (it.category, it.brand, it.price, it.in_stock))
        for n, it in enumerate(items)
    ]
    for start in range(0, len(changes), 20_000):
        idx.apply(changes[start : start + 20_000])
    return idx


def _metrics(ranked: list[list[str]], truth: list[str]) -> tuple[float, float]:
    hits = ndcg = 0.0
    for items, want in zip(ranked, truth, strict=True):
        if want in items[:K]:
            hits += 1
            ndcg += 1.0 / np.log2(items.index(want) + 2)
    return hits / len(truth), float(ndcg) / len(truth)


def quality(args: argparse.Namespace) -> dict[str, Any]:
    settings = replace(PersonalizeSettings(), device="cpu")
    shop = make_shop(args.items, args.users, args.seed)
    vectors = catalogue_vectors(shop.items, args.seed, settings)
    end = 100 * HOUR_MS
    t0 = time.perf_counter()
    tastes, popularity = _tastes(shop, vectors, args.per_user, end, settings)
    held = {h.user_id: h.item_id for h in shop.simulation.held_out(end)}
    users = sorted(tastes)
    truth = [held[u] for u in users]
    queries = np.stack([tastes[u].unit_vector() for u in users])  # type: ignore[misc]
    ann = _index(vectors, shop.items, settings.ann_nlist, settings.ann_nprobe, exact=False)
    exact = _index(vectors, shop.items, settings.ann_nlist, settings.ann_nprobe, exact=True)
    rules = RuleSet()
    popular = popularity.top(settings.popularity_top_n)

    def ranked(idx: AnnIndex | None) -> list[list[str]]:
        out = []
        fetch = min(settings.max_fetch, K * settings.overfetch + settings.max_seen)
        hits = idx.search(queries, fetch) if idx is not None else [[] for _ in users]
        best = popular[0][1] if popular else 1.0
        for u, h in zip(users, hits, strict=True):
            t = tastes[u]
            shopper = Shopper(t.seen, t.affinities(), t.avg_price, "", end)
            source = h if idx is not None else [(item, count / best) for item, count in popular]
            found_by = "similar" if idx is not None else "popular"
            cands = []
            for item, score in source:
                payload = cast(tuple[str, str, float, bool] | None, ann.payload(item))
                if payload is not None:
                    category, brand, price, in_stock = payload
                    cands.append(Candidate(item, score, category, brand, price, in_stock, found_by))
            out.append([r.item_id for r in rank(cands, K, rules, shopper)[0]])
        return out

    t_ann = time.perf_counter()
    ann_ranked = ranked(ann)
    t_exact = time.perf_counter()
    exact_ranked = ranked(exact)
    pop_ranked = ranked(None)
    raw_ann = ann.search(queries, K)
    raw_exact = exact.search(queries, K)
    recall = float(
        np.mean([len({i for i, _ in a} & {i for i, _ in e}) / K for a, e in zip(raw_ann, raw_exact, strict=True)])
    )
    (hr, ndcg), (hr_exact, ndcg_exact), (hr_pop, ndcg_pop) = (
        _metrics(ann_ranked, truth),
        _metrics(exact_ranked, truth),
        _metrics(pop_ranked, truth),
    )
    report = {
        "items": args.items,
        "users": len(users),
        "interactions_per_user": args.per_user,
        "settings": {
            "ann_nlist": settings.ann_nlist,
            "ann_nprobe": settings.ann_nprobe,
            "overfetch": settings.overfetch,
            "taste_half_life_h": settings.taste_half_life_h,
            "kind_weights": settings.kind_weights,
        },  # fmt: skip
        "hit_rate_at_10": {"ann": round(hr, 4), "exact": round(hr_exact, 4), "popularity": round(hr_pop, 4)},
        "ndcg_at_10": {"ann": round(ndcg, 4), "exact": round(ndcg_exact, 4), "popularity": round(ndcg_pop, 4)},
        "ann_recall_at_10_vs_exact": round(recall, 4),
        "seconds": {"tastes": round(t_ann - t0, 1), "ann_ranking": round(t_exact - t_ann, 1)},
    }
    # seeded and deterministic: one run is the figure (MIN_RUNS stands for it); only the default data counts
    record_unless(why_not_recorded(MIN_RUNS, other_data=args.changed), "personalize", {
        "hit_rate_at_10": hr, "popularity_hit_rate_at_10": hr_pop, "exact_hit_rate_at_10": hr_exact,
        "ndcg_at_10": ndcg, "ann_recall_at_10": recall,
    })  # fmt: skip
    return report


def _size_of(index: Any) -> int:
    return int(len(faiss.serialize_index(index)))


def _qps(index: Any, queries: np.ndarray, k: int = 50) -> tuple[float, np.ndarray]:
    faiss.omp_set_num_threads(1)
    out = []
    t0 = time.perf_counter()
    for start in range(0, len(queries), 64):
        out.append(index.search(queries[start : start + 64], k)[1])
    return len(queries) / (time.perf_counter() - t0), np.concatenate(out)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K]) & set(t[:K])) / K for f, t in zip(found, truth, strict=True)]))


def index_costs(args: argparse.Namespace) -> dict[str, Any]:
    settings = replace(PersonalizeSettings(), device="cpu")
    shop = make_shop(100_000, 2000, args.seed)
    base = catalogue_vectors(shop.items, args.seed, settings)
    tastes, _ = _tastes(shop, base, 10, 100 * HOUR_MS, settings)
    queries = np.stack([t.unit_vector() for t in tastes.values()]).astype(np.float32)  # type: ignore[misc]
    rng = np.random.default_rng(1)
    out: dict[str, Any] = {}
    for size in args.sizes:
        reps = [base] + [
            base + rng.normal(0, 0.02, base.shape).astype(np.float32) for _ in range(size // len(base) - 1)
        ]
        x = np.concatenate(reps)[:size]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        faiss.omp_set_num_threads(2)
        rows: list[dict[str, Any]] = []
        flat = faiss.IndexFlatIP(x.shape[1])
        t0 = time.perf_counter()
        flat.add(x)
        qps, truth = _qps(flat, queries)
        rows.append({"index": "Flat (exact)", "build_s": round(time.perf_counter() - t0 - len(queries) / qps, 2),
                     "memory_mb": round(_size_of(flat) / 2**20, 1), "qps_1_core": round(qps), "recall_at_10": 1.0})  # fmt: skip
        nlist = 1024 if size <= 200_000 else 4096
        faiss.omp_set_num_threads(2)
        t0 = time.perf_counter()
        ann = AnnIndex(x.shape[1], nlist, 16, train_at=10**12, use_gpu=False)
        ann.apply([Change(str(n), 1, x[n]) for n in range(len(x))])
        ann.train_at = 0
        ann._train()
        build = time.perf_counter() - t0
        for nprobe in (8, 16, 24, 32, 64):
            ann.set_nprobe(nprobe)
            qps, found = _qps(ann.index, queries)
            rows.append({"index": f"IVF{nlist},SQfp16 nprobe={nprobe} (AnnIndex)", "build_s": round(build, 2),
                         "memory_mb": round(_size_of(ann.index) / 2**20, 1), "qps_1_core": round(qps),
                         "recall_at_10": round(_recall(found, truth), 4)})  # fmt: skip
        faiss.omp_set_num_threads(2)
        hnsw = faiss.IndexHNSWFlat(x.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 80
        t0 = time.perf_counter()
        hnsw.add(x)
        build = time.perf_counter() - t0
        for ef in (32, 64, 128):
            hnsw.hnsw.efSearch = ef
            qps, found = _qps(hnsw, queries)
            rows.append({"index": f"HNSW32 efSearch={ef} (no deletes)", "build_s": round(build, 2),
                         "memory_mb": round(_size_of(hnsw) / 2**20, 1), "qps_1_core": round(qps),
                         "recall_at_10": round(_recall(found, truth), 4)})  # fmt: skip
        for r in rows:
            print(size, r, flush=True)
        out[str(size)] = rows
    return {"queries": len(queries), "k": 50, "batch": 64, "rows": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["quality", "index"])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--per-user", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100_000, 1_000_000])
    args = parser.parse_args(argv)
    args.changed = changed_options(parser, args, "items", "users", "per_user", "seed")
    report = quality(args) if args.mode == "quality" else index_costs(args)
    report["command"] = "python -m perf.personalize_eval " + " ".join(sys.argv[1:] if argv is None else argv)
    report["machine"] = "2-core shared dev VM, CPU only"
    path = REPORTS / f"personalize_{args.mode}.json"
    path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
