"""Where models run: CUDA when present, else CPU; and their loading, without progress bars."""

from __future__ import annotations

import torch


class DeviceUnavailable(RuntimeError):
    """The configured device does not exist on this machine."""


def pick_device(setting: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else CPU; ``cpu``, ``cuda`` and ``cuda:N`` are taken as asked,
    and a CUDA device that is not there is an error that says so.

    >>> pick_device("cpu").type
    'cpu'
    """
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"SLUICE_DEVICE={setting} but this machine has no usable CUDA GPU; use auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"SLUICE_DEVICE={setting} but only {torch.cuda.device_count()} CUDA device(s) are present"
            )
    return device


def quiet_loading() -> None:
    """Turn off transformers' per-tensor progress bars (they fill every flow's log and say nothing)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
