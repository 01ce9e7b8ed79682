"""llm-compressor's GPTQ (``GPTQModifier``) on a float checkpoint folder, run in the
interpreter of a virtual environment of its own (llm-compressor pins an older transformers than
pare's), writing the compressed-tensors folder it ships.

    VENV/bin/python benchmarks/_llmcompressor_gptq.py CHECKPOINT BATCHES SCHEME_JSON OUT

BATCHES: a safetensors file whose ``ids`` tensor holds the calibration windows (N, T), the
same token windows pare's GPTQ calibrates on. SCHEME_JSON: bits, group_size and the layers to
ignore. Prints one JSON line (seconds, versions). Used by ``benchmarks/llm.py``; its
``one_shot`` also by ``_llmcompressor_prune.py``.
"""

from __future__ import annotations

import json
import sys
import time
from importlib.metadata import version
from pathlib import Path

# this folder holds transformers.py, which must not shadow the library
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]


def one_shot(folder: str, batches: str, modifier):
    """The float model of ``folder`` after llm-compressor's ``oneshot`` with ``modifier`` on the
    windows of ``batches`` (each window whole): the model and the seconds ``oneshot`` took."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    ids = load_file(batches)["ids"]
    data = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    t0 = time.perf_counter()
    oneshot(
        model=model,
        dataset=data,
        recipe=modifier,
        max_seq_length=int(ids.shape[1]),
        num_calibration_samples=int(ids.shape[0]),
    )
    return model, time.perf_counter() - t0


def main() -> None:
    folder, batches, scheme_json, out = sys.argv[1:]
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoTokenizer

    scheme = json.loads(scheme_json)
    weights = {
        "num_bits": scheme["bits"],
        "type": "int",
        "symmetric": True,
        "strategy": "group",
        "group_size": scheme["group_size"],
    }
    modifier = GPTQModifier(
        config_groups={"group_0": {"targets": ["Linear"], "weights": weights}},
        ignore=scheme["ignore"],
    )
    model, seconds = one_shot(folder, batches, modifier)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model.save_pretrained(out, save_compressed=True)
    tokenizer.save_pretrained(out)
    print(
        json.dumps(
            {
                "seconds": seconds,
                "llmcompressor": version("llmcompressor"),
                "transformers": version("transformers"),
            }
        )
    )


if __name__ == "__main__":
    main()
