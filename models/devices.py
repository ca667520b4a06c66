"""Where models run: CUDA when present, else CPU."""

from __future__ import annotations

import torch


def pick_device(setting: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else CPU; anything else is taken as a torch device name.

    >>> pick_device("cpu").type
    'cpu'
    """
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)
