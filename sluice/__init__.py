"""Sluice: real-time AI workflows on Bytewax, Kafka and Redis."""
