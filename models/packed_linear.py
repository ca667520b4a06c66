"""bf16 linear layers with their weights packed once for oneDNN, instead of on every call.

``torch.nn.functional.linear`` on bf16 CPU tensors hands the weight to oneDNN in
PyTorch's plain layout, and oneDNN reorders it into its blocked (AMX) layout on
every call. For the encoder's small batches that reorder is most of the cost: a
384x1536 product over 2 tokens took 117 us plain and 58 us with the weight
packed once (17 tokens: 128 -> 72 us; 136: 277 -> 192 us; measured 2026-11-30,
one thread), with bit-identical results. The packed product is the kernel
PyTorch's own compiler uses for frozen bf16 models (``torch.ops.mkldnn``); where
this build lacks it, :func:`pack_bf16_linears` leaves the model unchanged.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

PACK_HINT_ROWS = 64  # oneDNN's layout choice for a typical call; any row count works with it (tested)


class PackedBf16Linear(nn.Module):
    """``y = x W^T + b`` in bf16 with ``W`` prepacked; the same numbers as the ``nn.Linear`` it replaces.

    >>> _ = torch.manual_seed(0)
    >>> lin = nn.Linear(64, 32).to(torch.bfloat16)
    >>> x = torch.randn(3, 5, 64, dtype=torch.bfloat16)
    >>> packed = PackedBf16Linear(lin) if packing_works() else lin
    >>> torch.equal(packed(x), lin(x))
    True
    """

    def __init__(self, lin: nn.Linear) -> None:
        super().__init__()
        weight = lin.weight.detach().to(torch.bfloat16)
        self.in_features, self.out_features = lin.in_features, lin.out_features
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACK_HINT_ROWS)
        self.bias = lin.bias.detach().to(torch.bfloat16) if lin.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def packing_works() -> bool:
    """Whether this torch build has the packed bf16 product and it agrees with ``F.linear`` exactly."""
    try:
        with torch.inference_mode():
            lin = nn.Linear(16, 8).to(torch.bfloat16)
            x = torch.randn(3, 16, dtype=torch.bfloat16)
            return bool(torch.equal(PackedBf16Linear(lin)(x), lin(x)))
    except (RuntimeError, AttributeError, NotImplementedError) as exc:
        log.info("packed bf16 linear layers unavailable (%s): the encoder keeps plain ones", exc)
        return False


def pack_bf16_linears(model: nn.Module) -> int:
    """Replace every bf16 ``nn.Linear`` of ``model`` (in place) by a :class:`PackedBf16Linear`; how many."""
    return _replace(model) if packing_works() else 0


def _replace(module: nn.Module) -> int:
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and child.weight.dtype == torch.bfloat16:
            setattr(module, name, PackedBf16Linear(child))
            count += 1
        else:
            count += _replace(child)
    return count
