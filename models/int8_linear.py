"""Row-wise int8 linear layers: the int8 speed-up on a CPU without making a text's vector depend on its batch.

PyTorch's dynamic quantization scales activations per *tensor*: one large value
anywhere in the batch changes how every other row is rounded, so the same
question embedded alone or beside 63 others got vectors with cosine down to
0.93, and the flow's top results changed with what else was in the batch. Here
weights are int8 per output channel and activations are quantized per *row*
(per token), so each token is rounded on its own: a row's result is the same
whatever else is in the batch (padding included), and the int8 matrix product
(``torch._int_mm``) still does the heavy work.
"""

from __future__ import annotations

import torch
from torch import nn


class RowwiseInt8Linear(nn.Module):
    """``y = x W^T + b`` with W int8 per output channel and x int8 per row; results independent of batching.

    >>> _ = torch.manual_seed(0)
    >>> lin = nn.Linear(64, 32)
    >>> q = RowwiseInt8Linear.from_linear(lin)
    >>> x = torch.randn(5, 64)
    >>> torch.equal(q(x)[:1], q(x[:1])), bool(torch.nn.functional.cosine_similarity(q(x), lin(x)).min() > 0.999)
    (True, True)
    """

    weight_q: torch.Tensor
    weight_scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.register_buffer("weight_q", weight_q.t().contiguous())  # (in, out) for _int_mm
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)
        self.in_features, self.out_features = weight_q.shape[1], weight_q.shape[0]

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> RowwiseInt8Linear:
        w = lin.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        w_q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
        bias = lin.bias.detach().float() if lin.bias is not None else None
        return cls(w_q, scale, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1]).float()
        scale = rows.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127.0
        x_q = torch.round(rows / scale).to(torch.int8)
        if x_q.shape[0] <= 16:  # _int_mm wants more than 16 rows; pad (rows are independent, so this is exact)
            pad = torch.zeros(17 - x_q.shape[0], x_q.shape[1], dtype=torch.int8)
            acc = torch._int_mm(torch.cat([x_q, pad]), self.weight_q)[: x_q.shape[0]]
        else:
            acc = torch._int_mm(x_q, self.weight_q)
        out = acc.float() * scale * self.weight_scale
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)


def quantize_rowwise(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (in place) by a :class:`RowwiseInt8Linear`."""
    for name, child in model.named_children():
        if isinstance(child, nn.Linear):
            setattr(model, name, RowwiseInt8Linear.from_linear(child))
        else:
            quantize_rowwise(child)
    return model
