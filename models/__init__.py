"""Model code: the transaction schema, feature schema, fraud model, training and loading."""

import os

# OpenMP threads that wait for work sleep instead of spinning (process-wide: training, and any flow or benchmark
# that gives torch more than one thread). torch and LightGBM train with 2 threads; on a
# box where another process holds a core, spinning threads wait on each other and training took over
# 10 minutes instead of ~30 s (passive: 32 s with the other core still busy). Set before either is imported;
# a value the user chose is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
