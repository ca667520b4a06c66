"""The fraud model: a small MLP over :mod:`models.fraud_features`, saved as a versioned artifact.

An artifact is a folder ``<root>/<version>/`` holding ``weights.pt`` (the state
dict), ``schema.json`` (feature names and normalisation) and ``metrics.json``
(held-out quality); ``<root>/LATEST`` names the version to serve.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.artifacts import resolve
from models.devices import pick_device
from models.fraud_features import FEATURE_NAMES


class FraudMLP(nn.Module):
    """Normalise, two hidden layers, one logit."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, n_features: int, mean: np.ndarray, std: np.ndarray, hidden: int = 64) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.net = nn.Sequential(
            nn.Linear(n_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std).squeeze(-1)


@dataclass
class FraudScorer:
    """A loaded model that scores a whole micro-batch in one call."""

    model: FraudMLP
    version: str
    device: torch.device
    metrics: dict[str, float]

    @torch.inference_mode()
    def score(self, rows: np.ndarray) -> np.ndarray:
        """Fraud probabilities for an ``(n, n_features)`` array.

        On CPU the model runs in float64, so a row's score does not depend (to any
        printed digit) on which other rows share its batch: replays reproduce scores.
        """
        dtype = next(self.model.parameters()).dtype
        x = torch.from_numpy(np.ascontiguousarray(rows)).to(self.device, dtype=dtype, non_blocking=True)
        return torch.sigmoid(self.model(x)).double().cpu().numpy()


def save_artifact(root: Path, version: str, model: FraudMLP, metrics: dict[str, float]) -> Path:
    """Write ``root/version/`` and point ``root/LATEST`` at it."""
    folder = root / version
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "weights.pt")
    schema = {
        "version": version,
        "features": list(FEATURE_NAMES),
        "hidden": model.net[0].out_features,
        "architecture": "FraudMLP",
    }
    (folder / "schema.json").write_text(json.dumps(schema, indent=2))
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (root / "LATEST").write_text(version + "\n")
    return folder


def load_scorer(root: str | Path, device: str = "auto", cpu_threads: int = 1) -> FraudScorer:
    """Load the artifact ``root/LATEST`` names (or ``root`` itself if it is a version folder)."""
    root = resolve(root)
    folder = root / (root / "LATEST").read_text().strip() if (root / "LATEST").exists() else root
    if not (folder / "weights.pt").exists():
        raise FileNotFoundError(f"no fraud model at {folder}: train one with `sluice train fraud` (SLUICE_MODEL_PATH)")
    schema = json.loads((folder / "schema.json").read_text())
    if schema["features"] != list(FEATURE_NAMES):
        raise ValueError(f"model {schema['version']} was trained on other features than this code computes")
    state = torch.load(folder / "weights.pt", map_location="cpu", weights_only=True)
    model = FraudMLP(len(FEATURE_NAMES), state["mean"].numpy(), state["std"].numpy(), schema["hidden"])
    model.load_state_dict(state)
    dev = pick_device(device)
    if dev.type == "cpu":
        torch.set_num_threads(cpu_threads)
        model.double()
    model.to(dev).eval()
    metrics = json.loads((folder / "metrics.json").read_text())
    return FraudScorer(model=model, version=schema["version"], device=dev, metrics=metrics)
