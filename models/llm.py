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
from models.devices import pick_device, quiet_loading

Message = dict[str, str]


@dataclass(frozen=True, slots=True)
class Generation:
    """One answer: its text, how many tokens it took, and whether a deadline cut it short."""

    text: str
    new_tokens: int
    truncated: bool


class _Deadlines(StoppingCriteria):
    """Per-row stop: a row is done once the wall clock passes its deadline. Also times the steps
    (the first call comes after the prefill and the first token), which feeds :class:`GenerationSpeed`."""

    def __init__(self, deadlines: Sequence[float]) -> None:
        self.deadlines = torch.tensor(list(deadlines), dtype=torch.float64)
        self.hit = torch.zeros(len(deadlines), dtype=torch.bool)
        self.started = time.perf_counter()
        self.first_step: float | None = None
        self.steps = 0

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
        if self.first_step is None:
            self.first_step = time.perf_counter()
        self.steps += 1
        late = self.deadlines < time.time()
        self.hit |= late
        return late.to(input_ids.device)


@dataclass
class GenerationSpeed:
    """Measured speed of batched generation: prefill seconds per prompt token, seconds per decoding step.

    Moving averages of what the generator observed; the priors are deliberately
    slow (a 2-core CPU), so a cold process plans conservatively.
    """

    prefill_s_per_token: float = 0.0005
    step_s: float = 0.08
    alpha: float = 0.3

    def observe(self, prompt_tokens: int, prefill_s: float, steps: int, decode_s: float) -> None:
        if prompt_tokens > 0 and prefill_s > 0:
            self.prefill_s_per_token += self.alpha * (prefill_s / prompt_tokens - self.prefill_s_per_token)
        if steps > 1 and decode_s > 0:
            self.step_s += self.alpha * (decode_s / (steps - 1) - self.step_s)

    def seconds(self, prompt_tokens: int, new_tokens: int) -> float:
        return prompt_tokens * self.prefill_s_per_token + new_tokens * self.step_s


def plan_batch(
    deadlines: Sequence[float], now: float, prompt_tokens: int, speed: GenerationSpeed, min_new: int, max_new: int
) -> tuple[list[int], int]:
    """Which rows of a batch can get at least ``min_new`` tokens before their deadlines, and how many new
    tokens the batch may generate so that it finishes before the earliest deadline among them.

    The batch is never started if it cannot finish in time: rows that would miss
    are left out (the caller answers them another way), and the token budget is
    cut to what the measured speed allows.

    >>> speed = GenerationSpeed(prefill_s_per_token=0.001, step_s=0.1)
    >>> plan_batch([100.5, 103.0, 110.0], now=100.0, prompt_tokens=500, speed=speed, min_new=12, max_new=64)
    ([1, 2], 25)
    >>> plan_batch([103.0, 110.0], now=100.0, prompt_tokens=100, speed=speed, min_new=12, max_new=64)
    ([0, 1], 28)
    """
    order = sorted(range(len(deadlines)), key=lambda i: deadlines[i])
    prefill = speed.seconds(prompt_tokens, 0)
    for start in range(len(order)):
        keep = order[start:]
        budget = deadlines[keep[0]] - now - prefill
        tokens = int(budget / speed.step_s) if speed.step_s > 0 else max_new
        if tokens >= min_new:
            return sorted(keep), min(max_new, tokens)
    return [], 0


class AnswerGenerator:
    """A loaded causal LM that answers a batch of chat prompts in one call."""

    def __init__(self, path: Path | str | None = None, device: str = "auto") -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        quiet_loading()

        self.path = Path(path) if path else ensure_converted(DEFAULT_LLM_DIR)
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"no LLM at {self.path} (a folder with config.json): check SLUICE_LLM_PATH")
        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path))
        self.tokenizer.padding_side = "left"
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(str(self.path), dtype=dtype).to(self.device).eval()  # type: ignore[arg-type]
        self.name = self.path.name
        self.speed = GenerationSpeed(step_s=0.02 if self.device.type == "cuda" else 0.08)

    def prompt_tokens(self, conversations: list[list[Message]]) -> int:
        """How many prompt tokens a batch of these conversations has (what its prefill costs)."""
        return sum(len(self.tokenizer(self.render(m))["input_ids"]) for m in conversations)

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
        prompt_tokens = int(batch["attention_mask"].sum())
        out = self.model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tokenizer.pad_token_id,
            stopping_criteria=StoppingCriteriaList([stop]),
        )
        finished = time.perf_counter()
        if stop.first_step is not None:
            self.speed.observe(prompt_tokens, stop.first_step - stop.started, stop.steps, finished - stop.first_step)
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
