"""Kafka connectors: one connection object, a checkpointed source, at-least-once and exactly-once sinks.

The names below are loaded on first use (PEP 562), so importing one submodule
(``operators.kafka.records``) does not import every connector: the sinks use the
instrumentation, which uses the records, and an eager package would make that
a circular import.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "BrokerUnreachable": "admin",
    "TopicsMissing": "admin",
    "check_broker": "admin",
    "create_topics": "admin",
    "list_partitions": "admin",
    "read_all": "admin",
    "read_to_end": "admin",
    "require_topics": "admin",
    "PROFILES": "connection",
    "KafkaConnection": "connection",
    "kafka_output": "output",
    "ID_HEADER": "records",
    "KafkaRecord": "records",
    "Position": "records",
    "SourceRecord": "records",
    "KafkaPartitionSource": "source",
    "StartAt": "source",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'operators.kafka' has no attribute {name!r}")
    return getattr(importlib.import_module(f"operators.kafka.{_WHERE[name]}"), name)
