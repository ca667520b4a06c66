"""Where trained and converted models live: ``models/artifacts/`` in the checkout (git-ignored)."""

from __future__ import annotations

from pathlib import Path

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"
FRAUD_MODEL_DIR = ARTIFACTS_DIR / "fraud"
LLM_DIR = ARTIFACTS_DIR / "llm" / "smollm2-135m-instruct"
PROJECT_ROOT = ARTIFACTS_DIR.parent.parent


def resolve(path: str | Path) -> Path:
    """``path`` as given when absolute or present in the working directory, else relative to the checkout.

    So the default ``models/artifacts/fraud`` works from any working directory.

    >>> resolve("models/artifacts/fraud") == FRAUD_MODEL_DIR or Path("models/artifacts/fraud").exists()
    True
    """
    p = Path(path)
    if p.is_absolute() or p.exists():
        return p
    return PROJECT_ROOT / p
