"""One module per workflow; each exposes ``flow`` for ``python -m bytewax.run dataflows.<name>:flow``."""
