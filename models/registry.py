"""The model registry: versioned artifacts in one folder, which one is served, which one is shadowed.

``<root>/<version>/`` are artifacts (:mod:`models.fraud_model`); ``<root>/LATEST``
names the served version, ``<root>/CANDIDATE`` the one scored in shadow (if
any), and ``<root>/promotions.jsonl`` is the append-only history of what was
served when (``rollback`` serves the previous entry again). Every pointer is
replaced atomically (write a temporary file, rename), so a flow that reads it at
any moment, or a process killed in the middle of a promotion, sees either the
old version or the new one, never a torn file.

    sluice model list | promote VERSION | rollback | shadow VERSION | unshadow
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.artifacts import resolve


@dataclass(frozen=True)
class VersionInfo:
    version: str
    created: str
    metrics: dict[str, Any]
    manifest: dict[str, Any]
    served: bool
    candidate: bool


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


ROLLBACK_FROM = "rollback from "  # the reason a rollback records (how the history tells it from a promote)


class UnknownVersion(LookupError):
    """A version the registry does not hold (or nothing to roll back to)."""

    def __str__(self) -> str:  # LookupError would quote the message like a key
        return str(self.args[0]) if self.args else ""


class ModelUnusable(RuntimeError):
    """A version whose artifact does not load (truncated weights, a wrong schema): never served."""


class ModelRegistry:
    """One model family's artifacts under ``root`` (e.g. ``models/artifacts/fraud``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = resolve(root)

    def versions(self) -> list[str]:
        """Every artifact's version, oldest first."""
        if not self.root.exists():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and (p / "manifest.json").exists()]
        return [p.name for p in sorted(found, key=lambda p: json.loads((p / "manifest.json").read_text())["created"])]

    def _read(self, name: str) -> str | None:
        try:  # not exists() then read: an unshadow or a promote in between would make that a FileNotFoundError
            return (self.root / name).read_text().strip() or None
        except FileNotFoundError:
            return None

    def served(self) -> str | None:
        """The version served now (``LATEST``)."""
        return self._read("LATEST")

    def candidate(self) -> str | None:
        """The version scored in shadow (``CANDIDATE``), if any."""
        return self._read("CANDIDATE")

    def folder(self, version: str) -> Path:
        path = self.root / version
        if not (path / "manifest.json").exists():
            raise UnknownVersion(f"no model version {version!r} in {self.root} (see `sluice model list`)")
        return path

    def promote(self, version: str, reason: str = "") -> None:
        """Serve ``version`` from now on (a running flow switches at its next checkpoint).

        Promoting the version in shadow ends the shadow: a flow would otherwise
        score the served model a second time as its own candidate.
        """
        self.folder(version)
        _write_atomically(self.root / "LATEST", version + "\n")
        if self.candidate() == version:
            self.shadow(None)
        entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "served": version, "reason": reason}
        with (self.root / "promotions.jsonl").open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def rollback(self) -> str:
        """Serve the version served before the current one again; returns it. Rollbacks stack: after
        promoting A, B, C, two rollbacks serve B, then A (not C again)."""
        current = self.served()
        earlier = self._served_stack()
        while earlier and earlier[-1] == current:
            earlier.pop()
        if not earlier:
            raise UnknownVersion("nothing to roll back to: no earlier version was ever served")
        self.promote(earlier[-1], reason=f"{ROLLBACK_FROM}{current}")
        return earlier[-1]

    def _served_stack(self) -> list[str]:
        """The promotions still in force, oldest first: a rollback takes back the promotion it undid."""
        stack: list[str] = []
        for entry in self.history():
            if stack and str(entry.get("reason", "")).startswith(ROLLBACK_FROM):
                stack.pop()
            if not stack or stack[-1] != entry["served"]:  # promoting what is served changes nothing
                stack.append(entry["served"])
        return stack

    def shadow(self, version: str | None) -> None:
        """Score ``version`` beside the served one (``None`` stops shadowing)."""
        if version is None:
            (self.root / "CANDIDATE").unlink(missing_ok=True)
            return
        self.folder(version)
        _write_atomically(self.root / "CANDIDATE", version + "\n")

    def history(self) -> list[dict[str, Any]]:
        path = self.root / "promotions.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def describe(self) -> list[VersionInfo]:
        served, candidate = self.served(), self.candidate()
        out = []
        for version in self.versions():
            folder = self.root / version
            manifest = json.loads((folder / "manifest.json").read_text())
            metrics = json.loads((folder / "metrics.json").read_text())
            out.append(
                VersionInfo(version, manifest["created"], metrics, manifest, version == served, version == candidate)
            )
        return out
