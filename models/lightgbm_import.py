"""Importing lightgbm without its scikit-learn wrappers: ~0.75 s off every fraud flow start.

lightgbm imports scikit-learn (and through it ``scipy.stats``) whenever it is installed, to offer
its ``LGBMClassifier`` API. This project trains with ``lgb.train`` and serves ``lgb.Booster``; the
wrappers are never used, yet their import was ~0.75 s of the ~3 s a fraud flow process spends
importing (``python -X importtime``: lightgbm 1.27 s, 0.52 s without scikit-learn). A flow restarted
after a crash waits for it, and so does every test that starts one.

scikit-learn stays importable: it is hidden only while lightgbm itself is first imported, and not
at all when either was imported before (then there is nothing to save).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def scikit_learn_hidden() -> Iterator[None]:
    """While the block runs, ``import sklearn`` fails (unless lightgbm or scikit-learn is loaded already).

    >>> import sys
    >>> was = "sklearn" in sys.modules
    >>> with scikit_learn_hidden():
    ...     pass
    >>> ("sklearn" in sys.modules) == was  # nothing left behind
    True
    """
    if "lightgbm" in sys.modules or "sklearn" in sys.modules:
        yield
        return
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # an import of it now raises ImportError
    try:
        yield
    finally:
        if sys.modules.get("sklearn", 0) is None:
            del sys.modules["sklearn"]
