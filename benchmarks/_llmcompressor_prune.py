"""llm-compressor's one-shot pruning (``SparseGPTModifier`` or ``WandaPruningModifier``) of a
float checkpoint folder, run in the interpreter of llm-compressor's own virtual environment (it
pins an older transformers than pare's).

    VENV/bin/python benchmarks/_llmcompressor_prune.py CHECKPOINT BATCHES SPEC_JSON OUT

BATCHES: a safetensors file whose ``ids`` tensor holds the calibration windows (N, T), the
windows pare's pruning calibrates on. SPEC_JSON: method (sparsegpt | wanda), sparsity,
mask_structure ("0:0" unstructured, "2:4") and the layers to ignore. Writes OUT/weights.safetensors
(the pruned Linear weights, for pare to score) and OUT/compressed (the folder llm-compressor
ships, its sparse compression chosen by itself). Prints one JSON line (seconds, folder bytes,
versions). Used by ``benchmarks/llm_pruning.py``.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import version
from pathlib import Path

# this folder holds transformers.py, which must not shadow the library: put it last on the path
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]


def main() -> None:
    folder, batches, spec_json, out = sys.argv[1:]
    import torch
    from _llmcompressor_gptq import one_shot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier
    from safetensors.torch import save_file

    spec = json.loads(spec_json)
    modifier = {"sparsegpt": SparseGPTModifier, "wanda": WandaPruningModifier}[spec["method"]](
        sparsity=spec["sparsity"],
        mask_structure=spec["mask_structure"],
        targets=["Linear"],
        ignore=spec["ignore"],
    )
    model, seconds = one_shot(folder, batches, modifier)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights = {
        f"{n}.weight": m.weight.detach().contiguous()
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")
    }
    save_file(weights, str(out / "weights.safetensors"))
    result = {
        "seconds": seconds,
        "llmcompressor": version("llmcompressor"),
        "transformers": version("transformers"),
    }
    try:
        model.save_pretrained(out / "compressed", save_compressed=True)
        config = json.loads((out / "compressed" / "config.json").read_text())
        sparsity = config.get("quantization_config", {}).get("sparsity_config") or {}
        result["format"] = sparsity.get("format")
        result["bytes"] = sum(f.stat().st_size for f in (out / "compressed").glob("*.safetensors"))
    except Exception as e:  # the scores stand without the file; say why it is missing
        result["save_error"] = f"{type(e).__name__}: {e}"[:300]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
