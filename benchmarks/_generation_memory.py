"""Peak resident memory of generation from an ONNX causal LM, in a process of its own so that
what is measured is that model's alone: the session made (its weights as ONNX Runtime holds them)
and a greedy continuation with the KV cache, at batch 1 and then at batch B.

    python benchmarks/_generation_memory.py MODEL_ONNX TOKENIZER_DIR PROMPT NEW_TOKENS BATCH

Prints one JSON line: the resident memory once the libraries and the tokenizer are loaded, before
the model (``before_bytes``), and the peak above it while loading and generating at batch 1
(``peak_batch_1_bytes``) and over loading and generating at batch B (``peak_batch_b_bytes``). Used by
``benchmarks/llm.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# this folder holds transformers.py, which must not shadow the library
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
from pare.export.onnx_lm import OrtCausalLM  # noqa: E402
from pare.generate import greedy  # noqa: E402
from pare.models.hf import CausalLM, load_tokenizer  # noqa: E402
from pare.training.offload import PeakRSS  # noqa: E402


def main() -> None:
    path, tokenizer_dir, prompt, new_tokens, batch = sys.argv[1:]
    tokenizer = load_tokenizer(Path(tokenizer_dir))
    with PeakRSS() as one:
        model = CausalLM(OrtCausalLM(path))
        greedy(model, tokenizer, prompt, int(new_tokens))
    with PeakRSS() as many:
        greedy(model, tokenizer, prompt, int(new_tokens), batch=int(batch))
    print(
        json.dumps(
            {
                "before_bytes": one.start,
                "peak_batch_1_bytes": one.peak - one.start,
                "peak_batch_b_bytes": max(one.peak, many.peak) - one.start,
                "batch": int(batch),
                "high_water_reset": one.reset and many.reset,
            }
        )
    )


if __name__ == "__main__":
    main()
