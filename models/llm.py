"""Batched answer generation with a small instruction-tuned causal LM (SmolLM2-135M-Instruct).

One ``generate`` call per micro-batch: prompts are rendered with the model's
chat template and left-padded; greedy decoding; at most ``max_new_tokens``; a
request whose deadline passes stops where it is (``truncated``) while the rest
of the batch goes on. CUDA with bf16 when present, CPU fp32 otherwise.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from models.convert_llm import DEFAULT_LLM_DIR, ensure_converted
from models.devices import pick_device

Message = dict[str, str]


@dataclass(frozen=True, slots=True)
class Generation:
    """One answer: its text, how many tokens it took, and whether a deadline cut it short."""

    text: str
    new_tokens: int
    truncated: bool


class _Deadlines(StoppingCriteria):
    """Per-row stop: a row is done once the wall clock passes its deadline."""

    def __init__(self, deadlines: Sequence[float]) -> None:
        self.deadlines = torch.tensor(list(deadlines), dtype=torch.float64)
        self.hit = torch.zeros(len(deadlines), dtype=torch.bool)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
        late = self.deadlines < time.time()
        self.hit |= late
        return late.to(input_ids.device)


class AnswerGenerator:
    """A loaded causal LM that answers a batch of chat prompts in one call."""

    def __init__(self, path: Path | str | None = None, device: str = "auto") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = Path(path) if path else ensure_converted(DEFAULT_LLM_DIR)
        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self.tokenizer.padding_side = "left"
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(str(self.path), dtype=dtype).to(self.device).eval()  # type: ignore[arg-type]
        self.name = self.path.name

    def render(self, messages: list[Message]) -> str:
        """The chat-template text the model sees for ``messages``."""
        return str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    @torch.inference_mode()
    def generate(
        self, conversations: list[list[Message]], max_new_tokens: int = 48, deadlines: Sequence[float] | None = None
    ) -> list[Generation]:
        """Answer every conversation; ``deadlines`` are wall-clock seconds (``time.time()``) per row.

        >>> gen = shared_generator()
        >>> out = gen.generate([[{"role": "user", "content": "Say hello."}]], max_new_tokens=8)
        >>> len(out), out[0].new_tokens > 0, out[0].truncated
        (1, True, False)
        """
        if not conversations:
            return []
        texts = [self.render(m) for m in conversations]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True).to(self.device)
        stop = _Deadlines(deadlines if deadlines is not None else [float("inf")] * len(texts))
        out = self.model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            stopping_criteria=StoppingCriteriaList([stop]),
        )
        new = out[:, batch["input_ids"].shape[1] :].cpu()
        results = []
        for row, truncated in zip(new, stop.hit.tolist(), strict=True):
            kept = row[row != self.tokenizer.pad_token_id]
            text = str(self.tokenizer.decode(kept, skip_special_tokens=True)).strip()
            results.append(Generation(text, len(kept), truncated))
        return results


@functools.cache
def shared_generator(device: str = "auto", path: str = "") -> AnswerGenerator:
    """One generator per process, device and model folder (``""``: the converted SmolLM2)."""
    return AnswerGenerator(path or None, device)
