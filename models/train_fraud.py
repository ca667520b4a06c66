"""Train the fraud MLP on generated transactions: ``python -m models.train_fraud``.

Events come from :class:`models.synthetic_transactions.TransactionStream`; their window
features come from the same :class:`state.windows.SlidingAggregates`
the flow runs, and profiles from the same card population the profile loader
writes to Redis. The last 20% of the stream (in time) is held out.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.artifacts import FRAUD_MODEL_DIR, resolve
from models.fraud_features import N_FEATURES, feature_matrix, feature_row, parse_profile
from models.fraud_model import FraudMLP, save_artifact
from models.synthetic_transactions import TransactionStream
from state.windows import SlidingAggregates, WindowSpec


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties averaged).

    >>> round(roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])), 2)
    0.75
    """
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1
        i = j + 1
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def precision_recall(labels: np.ndarray, flagged: np.ndarray) -> tuple[float, float]:
    tp = int(np.sum(flagged & (labels == 1)))
    precision = tp / max(1, int(flagged.sum()))
    recall = tp / max(1, int((labels == 1).sum()))
    return precision, recall


@dataclass
class Dataset:
    """Feature rows for training: each event's row with its card's profile, and the same event's row
    without one (what the flow computes when the profile is missing, unusable, or Redis is down)."""

    with_profile: np.ndarray
    without_profile: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def mixed(self, drop_rate: float, seed: int) -> np.ndarray:
        """Rows with the profile dropped for a ``drop_rate`` share of events (seeded)."""
        drop = np.random.default_rng(seed).random(len(self)) < drop_rate
        return np.where(drop[:, None], self.without_profile, self.with_profile)


def build_dataset(n_events: int, seed: int, n_cards: int) -> Dataset:
    """Rows and labels for the first ``n_events`` events of ``seed``'s stream."""
    stream = TransactionStream(seed, n_cards=n_cards)
    profiles = {c.card_id: parse_profile({k: str(v) for k, v in c.profile().items()}) for c in stream.cards}
    windows: dict[str, SlidingAggregates] = {}
    spec = WindowSpec()
    rows, bare, labels = [], [], []
    for txn, pattern in itertools.islice(stream, n_events):
        agg = windows.get(txn.card_id)
        if agg is None:
            agg = windows[txn.card_id] = SlidingAggregates(spec)
        feats = agg.add(txn.event_time_s, txn.amount, txn.merchant_id)
        if feats is None:
            continue
        rows.append(feature_row(txn, feats, profiles[txn.card_id]))
        bare.append(feature_row(txn, feats, None))
        labels.append(1.0 if pattern else 0.0)
    return Dataset(feature_matrix(rows), feature_matrix(bare), np.asarray(labels, dtype=np.float32))


def train(x: np.ndarray, y: np.ndarray, seed: int, epochs: int = 8, batch: int = 512) -> FraudMLP:
    torch.manual_seed(seed)
    # A feature that barely varies in training must not be scaled by a tiny std: a serving value off
    # that constant would land millions of sigmas out and saturate the score (floor at 1e-2).
    mean, std = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-2)
    model = FraudMLP(N_FEATURES, mean, std)
    pos_weight = torch.tensor((len(y) - y.sum()) / max(1.0, y.sum()))
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.sqrt(pos_weight))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch):
            idx = perm[i : i + batch]
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cards", type=int, default=20_000)
    parser.add_argument("--out", default=str(FRAUD_MODEL_DIR))
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument(
        "--profile-drop-rate",
        type=float,
        default=0.05,
        help="share of training events without a profile (new cards, Redis down): teaches the fallback",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    started = time.time()
    data = build_dataset(args.events, args.seed, args.cards)
    split = int(len(data) * 0.8)
    x, y = data.mixed(args.profile_drop_rate, args.seed), data.labels
    model = train(x[:split], y[:split], args.seed)
    held_out = y[split:]

    def score(rows: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return torch.sigmoid(model(torch.from_numpy(rows))).numpy()

    scores = score(x[split:])
    precision, recall = precision_recall(held_out, scores >= args.threshold)
    bare_scores = score(data.without_profile[split:])
    bare_precision, bare_recall = precision_recall(held_out, bare_scores >= args.threshold)
    metrics = {
        "roc_auc": round(roc_auc(held_out, scores), 4),
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "with_profile_roc_auc": round(roc_auc(held_out, score(data.with_profile[split:])), 4),
        "no_profile_roc_auc": round(roc_auc(held_out, bare_scores), 4),
        "no_profile_precision": round(bare_precision, 4),
        "no_profile_recall": round(bare_recall, 4),
        "profile_drop_rate": args.profile_drop_rate,
        "threshold": args.threshold,
        "train_events": split,
        "test_events": len(data) - split,
        "test_fraud_rate": round(float(held_out.mean()), 4),
        "seed": args.seed,
    }
    version = f"fraud-mlp-{time.strftime('%Y%m%d-%H%M%S')}-s{args.seed}"
    folder = save_artifact(Path(args.out), version, model, metrics)
    print(f"trained {version} in {time.time() - started:.1f}s -> {folder}")
    print(" ".join(f"{k}={v}" for k, v in metrics.items()))
    return 0


def ensure_trained(path: str | Path) -> str:
    """The version served from ``path``, training one first when there is none (demos, benchmarks)."""
    from models.fraud_model import load_scorer

    try:
        return load_scorer(path).version
    except FileNotFoundError:
        print("no fraud model yet: training one")
        main(["--out", str(resolve(path))])
        return load_scorer(path).version


if __name__ == "__main__":
    sys.exit(main())
