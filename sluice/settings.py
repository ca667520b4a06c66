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

KAFKA_PREFIX = "SLUICE_KAFKA_"
REPO_ROOT = Path(__file__).resolve().parent.parent


def _kafka_passthrough(env: Mapping[str, str]) -> dict[str, str]:
    return {
        key[len(KAFKA_PREFIX) :].lower().replace("_", "."): value
        for key, value in env.items()
        if key.startswith(KAFKA_PREFIX)
    }


@dataclass(frozen=True)
class Settings:
    """Runtime configuration of the Sluice flows.

    >>> s = Settings.from_env({"SLUICE_BROKERS": "k1:9092,k2:9092", "SLUICE_MAX_BATCH": "64"})
    >>> s.brokers, s.max_batch
    ('k1:9092,k2:9092', 64)
    """

    brokers: str = "127.0.0.1:19092"
    redis_url: str = "redis://127.0.0.1:16379/0"
    transactions_topic: str = "transactions"
    decisions_topic: str = "fraud-decisions"
    dlq_topic: str = "dead-letters"
    labels_topic: str = "fraud-labels"
    topic_partitions: int = 4
    max_batch: int = 1024
    max_wait_ms: float = 1.0
    inference_shards: int = 8
    model_path: str = str(REPO_ROOT / "models" / "artifacts" / "fraud")
    device: str = "auto"
    profile_cache_ttl_s: float = 30.0
    card_idle_timeout_s: float = 3600.0
    allowed_lateness_s: float = 60.0
    exactly_once: bool = False
    transactional_id_prefix: str = "sluice-fraud"
    start_from: str = "earliest"
    stop_at_end: bool = False
    source_batch_size: int = 2000
    kafka: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
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
