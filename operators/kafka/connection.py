"""One Kafka connection object for every client the project creates.

A :class:`KafkaConnection` is where the brokers are, the librdkafka options that
reach every client (security, SASL, TLS, ...) and the *broker profile*: the
batching and fetching settings that suit the broker in use. Sources, sinks,
admin helpers, the load generator and the collector all take one and ask it for
their client config, so an option set once applies everywhere (Quix Streams'
``ConnectionConfig`` plays the same role).

Profiles (``SLUICE_BROKER_PROFILE``):

* ``latency`` (default): small producer batches (``linger.ms`` 1) and consumers
  that come back for data every 5 ms. Lowest latency; on the in-memory Tansu broker
  it costs most broker CPU, because Tansu's cost is per fetch times stored batches.
* ``throughput``: producers linger 20 ms (fewer, larger batches) and consumers ask
  for at least 100 kB or 100 ms of data per fetch. Measured on Tansu at 10k msg/s:
  broker CPU 5-10x lower, which frees a core on a small machine (perf/REPORT.md).
* ``kafka``: librdkafka's own defaults plus idempotence, for a real Kafka cluster,
  whose fetch long-polling makes client-side polling tricks unnecessary.

The user's options (``SLUICE_KAFKA_*``) always win over the profile, and a
client's own must-haves (``group.id``, ``isolation.level``, ...) win over both.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

ClientConfig = dict[str, Any]

_PRODUCER_COMMON: Mapping[str, Any] = {
    "enable.idempotence": True,
    "compression.type": "lz4",
    "batch.num.messages": 10_000,
    "queue.buffering.max.messages": 500_000,
}

PROFILES: Mapping[str, Mapping[str, Mapping[str, Any]]] = MappingProxyType(
    {
        "latency": {
            "producer": {**_PRODUCER_COMMON, "linger.ms": 1},
            "consumer": {"fetch.wait.max.ms": 5},
        },
        "throughput": {
            "producer": {**_PRODUCER_COMMON, "linger.ms": 20},
            "consumer": {"fetch.min.bytes": 100_000, "fetch.wait.max.ms": 100},
        },
        "kafka": {
            "producer": {"enable.idempotence": True, "compression.type": "lz4", "linger.ms": 5},
            "consumer": {},
        },
    }
)


def profile_problem(name: str) -> str | None:
    """Why ``name`` is not a broker profile, or ``None`` when it is one.

    >>> profile_problem("throughput") is None, profile_problem("fast")
    (True, "unknown broker profile 'fast': use one of latency, throughput, kafka")
    """
    return None if name in PROFILES else f"unknown broker profile {name!r}: use one of {', '.join(PROFILES)}"


@dataclass(frozen=True)
class KafkaConnection:
    """Brokers, pass-through librdkafka options and a broker profile.

    >>> conn = KafkaConnection("k1:9092", {"security.protocol": "SASL_SSL"})
    >>> conn.client_config(**{"client.id": "x"})
    {'bootstrap.servers': 'k1:9092', 'security.protocol': 'SASL_SSL', 'client.id': 'x'}
    >>> conn.producer_config()["linger.ms"], KafkaConnection("k", profile="throughput").consumer_config()["fetch.min.bytes"]
    (1, 100000)
    """

    brokers: str
    options: Mapping[str, str] = field(default_factory=dict)
    profile: str = "latency"

    def __post_init__(self) -> None:
        if problem := profile_problem(self.profile):
            raise ValueError(problem)

    def client_config(self, **extra: Any) -> ClientConfig:
        """Brokers, then the pass-through options, then ``extra`` (admin clients and the like)."""
        return {"bootstrap.servers": self.brokers, **self.options, **extra}

    def producer_config(self, **extra: Any) -> ClientConfig:
        """A producer's config: the profile's batching, the user's options, then ``extra``."""
        return {"bootstrap.servers": self.brokers, **PROFILES[self.profile]["producer"], **self.options, **extra}

    def consumer_config(self, **extra: Any) -> ClientConfig:
        """A consumer's config: the profile's fetching, the user's options, then ``extra``.

        Topics are never auto-created by a read: a typo in a topic name must be an
        error, not a new empty topic that the flow waits on forever.
        """
        return {
            "bootstrap.servers": self.brokers,
            "allow.auto.create.topics": False,
            **PROFILES[self.profile]["consumer"],
            **self.options,
            **extra,
        }
