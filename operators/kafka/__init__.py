"""Kafka connectors: one connection object, a checkpointed source, at-least-once and exactly-once sinks."""

from operators.kafka.admin import (
    BrokerUnreachable,
    TopicsMissing,
    check_broker,
    create_topics,
    list_partitions,
    read_all,
    read_to_end,
    require_topics,
)
from operators.kafka.connection import PROFILES, KafkaConnection
from operators.kafka.output import kafka_output
from operators.kafka.records import ID_HEADER, KafkaRecord, Position, SourceRecord
from operators.kafka.source import KafkaPartitionSource, StartAt

__all__ = [
    "ID_HEADER",
    "PROFILES",
    "BrokerUnreachable",
    "KafkaConnection",
    "KafkaPartitionSource",
    "KafkaRecord",
    "Position",
    "SourceRecord",
    "StartAt",
    "TopicsMissing",
    "check_broker",
    "create_topics",
    "kafka_output",
    "list_partitions",
    "read_all",
    "read_to_end",
    "require_topics",
]
