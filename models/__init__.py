"""Model code: the transaction schema, feature schema, fraud model, training and loading."""

import os

# OpenMP threads that wait for work spin only briefly before they sleep (libgomp's default spin is long).
# torch and LightGBM train with 2 threads; on a box where another process holds a core, spinning threads
# wait on each other: `sluice train fraud` took over 10 minutes there. Measured on the 2-core box, seed 3:
#   default spin: 34 s idle, > 600 s with a busy core;  GOMP_SPINCOUNT=10000: 32 s idle, 97 s busy;
#   OMP_WAIT_POLICY=PASSIVE: 54 s idle, 37 s busy (set it yourself on a machine that is always busy).
# Set before torch or LightGBM is imported; a value the user chose is kept.
os.environ.setdefault("GOMP_SPINCOUNT", "10000")
