"""Shared fixtures: a real Tansu broker and a real Redis on free ports, and a small trained model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.train_fraud import main as train_main
from sluice.local.stack import LocalStack
from sluice.processes import free_port
from sluice.settings import FraudSettings
from tests.helpers import fraud_settings


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """One broker and one Redis for the whole session; tests isolate themselves by topic names."""
    s = LocalStack(kafka_port=free_port(), redis_port=free_port(), state_dir=tmp_path_factory.mktemp("stack"))
    s.start()
    yield s
    s.stop()


MODEL_TRAINING = ["--events", "400000", "--seed", "3"]  # about 40 s: the sequence model needs that much to learn
_training = pytest.StashKey[tuple[subprocess.Popen[bytes], Path]]()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start training the session's fraud model as soon as the collected tests show one needs it: on one
    thread (as fast as two here: the work is small batches) in its own process, it overlaps the tests that
    run before the first one that uses it (the assistant's, which mostly wait on flows) instead of adding
    ~40 s to the suite's wall time."""
    if not any("model_dir" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    out = Path(tempfile.mkdtemp(prefix="sluice-test-model-"))
    log = (out.parent / f"{out.name}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "models.train_fraud", *MODEL_TRAINING, "--out", str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    session.config.stash[_training] = (proc, out)


def pytest_sessionfinish(session: pytest.Session) -> None:
    started = session.config.stash.get(_training, None)
    if started is not None:
        proc, out = started
        if proc.poll() is None:  # the run ended (-x, Ctrl-C) before a test needed the model
            proc.kill()
            proc.wait()
        shutil.rmtree(out, ignore_errors=True)
        Path(out.parent / f"{out.name}.log").unlink(missing_ok=True)


@pytest.fixture(scope="session")
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real model (trees, MLP and GRU) trained on a generated stream, by the background process started at
    collection (or here, when that did not happen)."""
    started = request.config.stash.get(_training, None)
    if started is None:
        out = tmp_path_factory.mktemp("model")
        train_main([*MODEL_TRAINING, "--out", str(out)])
        return out
    proc, out = started
    code = proc.wait()
    assert code == 0, Path(out.parent / f"{out.name}.log").read_text(errors="replace")[-4000:]
    return out


@pytest.fixture()
def settings(stack: LocalStack, model_dir: Path) -> FraudSettings:
    """Settings pointing at the session stack, with topics of this test's own."""
    return fraud_settings(stack, model_dir)
