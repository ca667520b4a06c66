"""One typed settings object, read from ``SLUICE_*`` environment variables.

Every knob a flow needs lives here so that a deployment is configured in one
place. Kafka client options (``security.protocol``, SASL, TLS, ...) pass through
untouched from variables named ``SLUICE_KAFKA_<OPTION>``, with dots written as
underscores: ``SLUICE_KAFKA_SECURITY_PROTOCOL=SASL_SSL`` becomes
``security.protocol=SASL_SSL``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TypeVar

KAFKA_PREFIX = "SLUICE_KAFKA_"
REPO_ROOT = Path(__file__).resolve().parent.parent
S = TypeVar("S", bound="FlowSettings")


def _kafka_passthrough(env: Mapping[str, str]) -> dict[str, str]:
    return {
        key[len(KAFKA_PREFIX) :].lower().replace("_", "."): value
        for key, value in env.items()
        if key.startswith(KAFKA_PREFIX)
    }


@dataclass(frozen=True)
class FlowSettings:
    """What every Sluice flow needs: where Kafka and Redis are, the dead-letter topic,
    delivery semantics, where the input starts, and the device for models.

    Each workflow extends it with its own fields; all are read the same way from
    ``SLUICE_<FIELD>`` variables.
    """

    brokers: str = "127.0.0.1:19092"
    redis_url: str = "redis://127.0.0.1:16379/0"
    dlq_topic: str = "dead-letters"
    topic_partitions: int = 4
    device: str = "auto"
    exactly_once: bool = False
    transactional_id_prefix: str = "sluice"
    start_from: str = "earliest"
    stop_at_end: bool = False
    source_batch_size: int = 2000
    kafka: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls: type[S], env: Mapping[str, str] | None = None) -> S:
        """Build settings from ``SLUICE_<FIELD>`` variables (upper-case field names)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            if f.name == "kafka":
                continue
            raw = env.get(f"SLUICE_{f.name.upper()}")
            if raw is None:
                continue
            default = getattr(cls, f.name)
            if isinstance(default, bool):
                values[f.name] = raw.strip().lower() in ("1", "true", "yes", "on")
            elif isinstance(default, int):
                values[f.name] = int(raw)
            elif isinstance(default, float):
                values[f.name] = float(raw)
            else:
                values[f.name] = raw
        values["kafka"] = _kafka_passthrough(env)
        return cls(**values)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        """The ``SLUICE_*`` variables that make :meth:`from_env` rebuild these settings
        (how a flow process is pointed at them).

        >>> Settings.from_env(Settings(max_batch=7).to_env()).max_batch
        7
        """
        env = {
            f"SLUICE_{f.name.upper()}": str(int(v) if isinstance(v, bool) else v)
            for f in fields(self)
            if f.name != "kafka" and (v := getattr(self, f.name)) is not None
        }
        env.update({KAFKA_PREFIX + k.upper().replace(".", "_"): v for k, v in self.kafka.items()})
        return env

    def kafka_config(self, **extra: object) -> dict[str, object]:
        """Client config for confluent-kafka: brokers, pass-through options, then ``extra``."""
        config: dict[str, object] = {"bootstrap.servers": self.brokers}
        config.update(self.kafka)
        config.update(extra)
        return config


@dataclass(frozen=True)
class Settings(FlowSettings):
    """Runtime configuration of the fraud flow.

    >>> s = Settings.from_env({"SLUICE_BROKERS": "k1:9092,k2:9092", "SLUICE_MAX_BATCH": "64"})
    >>> s.brokers, s.max_batch
    ('k1:9092,k2:9092', 64)
    """

    transactions_topic: str = "transactions"
    decisions_topic: str = "fraud-decisions"
    labels_topic: str = "fraud-labels"
    max_batch: int = 1024
    max_wait_ms: float = 1.0
    inference_shards: int = 8
    model_path: str = str(REPO_ROOT / "models" / "artifacts" / "fraud")
    profile_cache_ttl_s: float = 30.0
    card_idle_timeout_s: float = 3600.0
    allowed_lateness_s: float = 60.0
    transactional_id_prefix: str = "sluice-fraud"


@dataclass(frozen=True)
class AssistantSettings(FlowSettings):
    """Runtime configuration of the conversational assistant flow.

    >>> AssistantSettings.from_env({"SLUICE_GENERATE": "0", "SLUICE_TOP_K": "5"}).top_k
    5
    """

    documents_topic: str = "documents"
    requests_topic: str = "chat-requests"
    requests_start_from: str = ""  # empty: like start_from; "latest" rebuilds the index without re-answering old chats
    responses_topic: str = "chat-responses"
    handoff_topic: str = "handoff"
    index_changes_topic: str = "documents-indexed"
    dlq_topic: str = "assistant-dead-letters"
    max_request_chars: int = 2000
    max_turns: int = 6
    session_idle_timeout_s: float = 900.0
    chunk_tokens: int = 160
    chunk_overlap: int = 32
    top_k: int = 3
    context_chars: int = 400  # per passage: the prompt (prefill) is most of the generation cost on a CPU
    embed_max_batch: int = 64
    embed_max_wait_ms: float = 2.0
    embed_shards: int = 1  # raise to the worker count when scaling out
    torch_threads: int = (
        1  # intra-op threads per process; 0: torch default (one per core, spin-waits: see perf/REPORT.md)
    )
    encoder_int8: bool = True  # CPU only; changing it needs a fresh index (documents replayed)
    generate: bool = True
    llm_path: str = ""
    gen_max_batch: int = 16
    gen_max_wait_ms: float = 5.0
    gen_shards: int = 1
    gen_max_new_tokens: int = 48
    gen_deadline_ms: float = 10_000.0
    transactional_id_prefix: str = "sluice-assistant"
    source_batch_size: int = 500
