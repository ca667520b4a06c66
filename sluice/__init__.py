"""Sluice: real-time AI workflows on Bytewax, Kafka and Redis."""

import models  # noqa: F401 - sets GOMP_SPINCOUNT before anything loads torch or LightGBM (see models/__init__.py)
