"""GPTQ of a causal LM read from a float checkpoint folder with its decoder blocks on disk, in a
process of its own so that the resident memory measured is the calibration's alone.

    python benchmarks/_gptq_on_disk.py CHECKPOINT CONFIG_JSON BATCHES OUT

The model is built on the meta device; only the tensors outside the blocks (the token table,
the final norm) are read in whole, the blocks stream from the checkpoint's safetensors one at a
time (``pare.training.offload``). Writes the codes of every calibrated layer to OUT
(safetensors) and prints one JSON line: the plan and the measured peaks (bytes), and the
resident memory before any weight was read. Used by
``benchmarks/llm.py``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# this folder holds transformers.py, which must not shadow the library
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM  # noqa: E402

from pare.config import from_dict  # noqa: E402
from pare.models.hf import CausalLM  # noqa: E402
from pare.techniques.quantize.apply import calibrate_offloaded, layer_specs, quant_layers  # noqa: E402
from pare.techniques.quantize.config import QuantizeConfig  # noqa: E402
from pare.training.offload import TensorFiles, peak_rss, rss  # noqa: E402

BLOCKS = "model.model.layers."


def main() -> None:
    folder, config_json, batches_file, out = sys.argv[1:]
    hf_config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = CausalLM(AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager")).eval()
    # the libraries and the model's code loaded (transformers imports the modeling code lazily:
    # 105 MiB here), no weight read yet: what calibration's memory is measured from
    at_start = rss()
    source = TensorFiles(Path(folder), prefix="model.")
    outside = [n for n in model.state_dict() if not n.startswith(BLOCKS) and n[6:] in source.where]
    model.load_state_dict(source.read(outside), strict=False, assign=True)
    model.model.tie_weights()
    # the rotary table is computed, not stored (a Llama/Qwen2 layout): build it on the CPU
    rotary = model.model.model.rotary_emb
    model.model.model.rotary_emb = type(rotary)(config=hf_config)
    config = from_dict(QuantizeConfig, json.loads(config_json))
    specs, _ = layer_specs(model, config)
    saved = load_file(batches_file)
    batches = [saved[str(i)] for i in range(len(saved))]
    loading_peak = peak_rss()
    disk, _, memory = calibrate_offloaded(model, specs, batches, config, Path(out).parent / "work", source)
    codes = {}
    for b in disk.blocks:
        disk.load(b)
        codes.update(
            {n: m.pinned_codes.clone() for n, m in quant_layers(model).items() if n.startswith(b + ".")}
        )
        disk.release(b)
    save_file(codes, out)
    print(
        json.dumps({**memory, "rss_before_weights_bytes": at_start, "loading_peak_rss_bytes": loading_peak})
    )


if __name__ == "__main__":
    main()
