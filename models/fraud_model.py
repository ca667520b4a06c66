"""The fraud models and their artifact: gradient-boosted trees or an MLP first, a sequence model second.

Stage 1 scores every event from its feature row (:mod:`models.fraud_features`):
a LightGBM model or a small MLP, whichever the training run found better (both
are in every artifact; ``stage1`` selects). Stage 2 is a small GRU over the
card's last 32 events (plus the row and the stage-1 score), trained on and
applied to the *uncertain band* only: events whose stage-1 score falls between
the band's limits or that broke a rule.

An artifact is a folder ``<root>/<version>/`` holding ``mlp.pt``, ``gbt.txt``,
``gru.pt``, ``schema.json`` (features, band, which stage 1 is best),
``metrics.json`` (held-out quality), ``drift_reference.<model>.json`` (each
model's held-out score and top-feature distributions, the baseline the drift
alarms compare live traffic with: :mod:`state.drift`) and ``manifest.json``
(training data range, code version, creation time). Which version is served is
the registry's business (:mod:`models.registry`).

Scores are computed in float64, so an event's score does not depend on what
else is in its batch (trees: bit for bit; networks: to about 1e-15, far below the
4 decimals a decision carries): a replay after a crash reproduces it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models.artifacts import resolve
from models.devices import pick_device
from models.fraud_features import FEATURE_NAMES, SEQUENCE_FEATURES, SEQUENCE_LENGTH
from models.lightgbm_import import scikit_learn_hidden

with scikit_learn_hidden():
    import lightgbm as lgb


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


class FraudGRU(nn.Module):
    """A GRU over the card's recent events that corrects the stage-1 score: its last state, the event's
    feature row and the stage-1 logit feed a head whose output is *added* to the stage-1 logit.

    The head's last layer starts at zero, so an untrained GRU reproduces stage 1
    exactly and training (with early stopping on held-out band events) can only
    move the score where the sequence says something the row did not.
    """

    row_mean: torch.Tensor
    row_std: torch.Tensor

    def __init__(self, row_mean: np.ndarray, row_std: np.ndarray, hidden: int = 32) -> None:
        super().__init__()
        self.register_buffer("row_mean", torch.as_tensor(row_mean, dtype=torch.float32))
        self.register_buffer("row_std", torch.as_tensor(row_std, dtype=torch.float32))
        self.gru = nn.GRU(len(SEQUENCE_FEATURES), hidden, batch_first=True)
        correction = nn.Linear(32, 1)
        nn.init.zeros_(correction.weight)
        nn.init.zeros_(correction.bias)
        self.head = nn.Sequential(nn.Linear(hidden + len(FEATURE_NAMES) + 1, 32), nn.ReLU(), correction)

    def forward(self, seqs: torch.Tensor, rows: torch.Tensor, stage1: torch.Tensor) -> torch.Tensor:
        _, last = self.gru(seqs)
        rows = (rows - self.row_mean) / self.row_std
        logit_1 = torch.logit(stage1.clamp(1e-6, 1 - 1e-6)).unsqueeze(-1)
        return (logit_1 + self.head(torch.cat([last[-1], rows, logit_1], dim=-1))).squeeze(-1)


def model_name(kind: str) -> str:
    """A cascade model's name in metrics, drift references and alarms: ``fraud-gbt``, ``fraud-mlp``, ``fraud-gru``."""
    return f"fraud-{kind}"


@dataclass(frozen=True)
class Band:
    """Which stage-1 outcomes go to stage 2: a score in [low, high), or any fired rule."""

    low: float = 0.2
    high: float = 0.9

    def wants(self, score: float, rules_fired: bool) -> bool:
        return rules_fired or self.low <= score < self.high


def combine_scores(stage1: np.ndarray, stage2: np.ndarray) -> np.ndarray:
    """An escalated event's final score: the sigmoid of the mean of both stages' logits.

    Averaging keeps what each model knows (the trees see the profile and window
    features sharply, the GRU sees the order of events); on held-out data it beat
    the stage-2 score alone (cascade PR-AUC 0.914 vs 0.908) and a learned remap.

    >>> combine_scores(np.array([0.5, 0.9]), np.array([0.5, 0.1])).round(3).tolist()
    [0.5, 0.5]
    """
    eps = 1e-9
    s1, s2 = np.clip(stage1, eps, 1 - eps), np.clip(stage2, eps, 1 - eps)
    mean_logit = (np.log(s1 / (1 - s1)) + np.log(s2 / (1 - s2))) / 2
    return 1.0 / (1.0 + np.exp(-mean_logit))


@dataclass
class FraudCascade:
    """A loaded artifact: stage-1 models (both kinds), the stage-2 GRU, the band, and what they were."""

    version: str
    stage1_kind: str  # "gbt" | "mlp"
    mlp: FraudMLP
    gbt: lgb.Booster
    gru: FraudGRU
    band: Band
    device: torch.device
    metrics: dict[str, Any]

    @property
    def stage1_version(self) -> str:
        return f"{self.version}/{self.stage1_kind}"

    @property
    def stage2_version(self) -> str:
        return f"{self.version}/gru"

    @torch.inference_mode()
    def stage1(self, rows: np.ndarray) -> np.ndarray:
        """Stage-1 fraud probabilities for an ``(n, n_features)`` array (float64)."""
        if len(rows) == 0:
            return np.zeros(0)
        if self.stage1_kind == "gbt":
            return np.asarray(self.gbt.predict(np.asarray(rows, dtype=np.float64), num_threads=1), dtype=np.float64)
        x = torch.from_numpy(np.ascontiguousarray(rows)).to(self.device, dtype=torch.float64)
        return torch.sigmoid(self.mlp(x)).double().cpu().numpy()

    @torch.inference_mode()
    def stage2(self, seqs: np.ndarray, rows: np.ndarray, stage1: np.ndarray) -> np.ndarray:
        """Stage-2 probabilities for ``(n, 32, k)`` sequences, their rows and stage-1 scores."""
        if len(rows) == 0:
            return np.zeros(0)
        dev = self.device
        out = self.gru(
            torch.from_numpy(np.ascontiguousarray(seqs)).to(dev, dtype=torch.float64),
            torch.from_numpy(np.ascontiguousarray(rows)).to(dev, dtype=torch.float64),
            torch.from_numpy(np.ascontiguousarray(stage1)).to(dev, dtype=torch.float64),
        )
        return torch.sigmoid(out).double().cpu().numpy()


def save_cascade(
    folder: Path,
    mlp: FraudMLP,
    gbt: lgb.Booster,
    gru: FraudGRU,
    schema: dict[str, Any],
    metrics: dict[str, Any],
    manifest: dict[str, Any],
) -> Path:
    """Write an artifact folder (the registry decides whether it is served)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(mlp.state_dict(), folder / "mlp.pt")
    gbt.save_model(str(folder / "gbt.txt"))
    torch.save(gru.state_dict(), folder / "gru.pt")
    full_schema = {
        "features": list(FEATURE_NAMES),
        "sequence_features": list(SEQUENCE_FEATURES),
        "sequence_length": SEQUENCE_LENGTH,
        "mlp_hidden": mlp.net[0].out_features,
        **schema,
    }
    for name, body in (("schema", full_schema), ("metrics", metrics), ("manifest", manifest)):
        (folder / f"{name}.json").write_text(json.dumps(body, indent=2))
    return folder


def load_cascade(folder: str | Path, device: str = "auto", stage1: str = "best", cpu_threads: int = 1) -> FraudCascade:
    """Load the artifact in ``folder``; ``stage1`` is ``gbt``, ``mlp`` or ``best`` (what training chose)."""
    folder = resolve(folder)
    if not (folder / "manifest.json").exists():
        raise FileNotFoundError(f"no fraud model artifact at {folder}: train one with `sluice train fraud`")
    schema = json.loads((folder / "schema.json").read_text())
    if schema["features"] != list(FEATURE_NAMES) or schema["sequence_features"] != list(SEQUENCE_FEATURES):
        raise ValueError(f"model {folder.name} was trained on other features than this code computes: retrain it")
    mlp_state = torch.load(folder / "mlp.pt", map_location="cpu", weights_only=True)
    mlp = FraudMLP(len(FEATURE_NAMES), mlp_state["mean"].numpy(), mlp_state["std"].numpy(), schema["mlp_hidden"])
    mlp.load_state_dict(mlp_state)
    gru_state = torch.load(folder / "gru.pt", map_location="cpu", weights_only=True)
    gru = FraudGRU(gru_state["row_mean"].numpy(), gru_state["row_std"].numpy(), schema.get("gru_hidden", 32))
    gru.load_state_dict(gru_state)
    dev = pick_device(device)
    if dev.type == "cpu":
        torch.set_num_threads(cpu_threads)
    mlp.double().to(dev).eval()
    gru.double().to(dev).eval()
    kind = schema["best_stage1"] if stage1 == "best" else stage1
    if kind not in ("gbt", "mlp"):
        raise ValueError(f"stage 1 is gbt, mlp or best, not {stage1!r}")
    return FraudCascade(
        version=folder.name,
        stage1_kind=kind,
        mlp=mlp,
        gbt=lgb.Booster(model_file=str(folder / "gbt.txt")),
        gru=gru,
        band=Band(**schema["band"]),
        device=dev,
        metrics=json.loads((folder / "metrics.json").read_text()),
    )
