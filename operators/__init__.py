"""Reusable Bytewax operators and connectors; nothing here knows about a workflow."""
