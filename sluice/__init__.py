"""Sluice: real-time AI workflows on Bytewax, Kafka and Redis."""

import models  # noqa: F401 - sets OMP_WAIT_POLICY before anything loads torch or LightGBM (see models/__init__.py)
