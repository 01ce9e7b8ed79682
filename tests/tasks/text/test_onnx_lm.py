"""Stages of a pretrained causal LM written as ONNX with a KV cache and MatMulNBits layers
(``pare checkpoint --format onnx``), run in ONNX Runtime to pare's own logits and continuations."""

from __future__ import annotations

import onnx
import pytest
import torch

import pare
from pare.cli import main
from pare.errors import UnsupportedModelError
from pare.export.onnx_lm import OrtCausalLM, matmul_nbits_tensors
from pare.formats.schemes import WeightSpec, quantize_weight
from pare.generate import greedy
from pare.models.hf import CausalLM, load_tokenizer
from pare.recipes.pipeline import stage_model
from tests.tasks.text.conftest import tiny_causal_lm
from tests.tasks.text.test_causal_lm import lm_recipe


def _onnx_folder(stage_folder, out, *extra):
    assert main(["checkpoint", str(stage_folder), "--out", str(out), "--format", "onnx", *extra]) == 0
    return out


def _nbits_nodes(folder) -> list:
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    return [n for n in graph.node if n.op_type == "MatMulNBits"]


def _same_as_the_stage(stage_folder, onnx_folder, atol=1e-4):
    ours = stage_model(stage_folder)[0]
    ort = CausalLM(OrtCausalLM(onnx_folder / "model.onnx"))
    ids = torch.randint(0, 384, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ours(ids)
    got = ort(ids)
    assert got.shape == want.shape and (got - want).abs().max() < atol
    # prefill then decode through the cache in ONNX Runtime: the torch model's continuation
    tok = load_tokenizer(onnx_folder)
    prompt = "The with statement is used to"
    assert greedy(ort, tok, prompt, 12)["text"] == greedy(ours, tok, prompt, 12)["text"]


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "layers"), [("00-baseline", 0), ("01-gptq4", 15), ("02-rtn3-asym", 14)])
def test_onnx_runtime_runs_the_stage_with_its_own_codes(quantized_run, stage, layers):
    folder = quantized_run / "run" / "stages" / stage
    out = _onnx_folder(folder, quantized_run / f"onnx-{stage}")
    nodes = _nbits_nodes(out)
    assert len(nodes) == layers  # 7 Linear layers per block, 2 blocks (+ the head for GPTQ)
    if layers:
        attrs = {a.name: a.i for a in nodes[0].attribute}
        # 3-bit codes run in the 4-bit kernel (exact, as big as 4 bits); blocks are pare's groups
        assert attrs["bits"] == 4 and attrs["block_size"] == (16 if stage == "01-gptq4" else 32)
        assert (len(nodes[0].input) == 4) is (stage == "02-rtn3-asym")  # zero points when asymmetric
    _same_as_the_stage(folder, out)
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()


@pytest.mark.slow
def test_quantized_onnx_is_smaller_and_accuracy_level_4_stays_close(quantized_run):
    stages = quantized_run / "run" / "stages"
    fp32 = _onnx_folder(stages / "00-baseline", quantized_run / "onnx-size-fp32")
    int4 = _onnx_folder(stages / "01-gptq4", quantized_run / "onnx-acc4", "--accuracy-level", "4")
    assert {a.name: a.i for a in _nbits_nodes(int4)[0].attribute}["accuracy_level"] == 4
    # the tiny model's float token table dominates both files; its Linear weights shrink ~6x
    assert (int4 / "model.onnx").stat().st_size < 0.8 * (fp32 / "model.onnx").stat().st_size
    ids = torch.randint(0, 384, (1, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = stage_model(stages / "01-gptq4")[0](ids)
    got = CausalLM(OrtCausalLM(int4 / "model.onnx"))(ids)  # inputs quantized to int8 per block
    assert (got - want).abs().max() < 0.05 * want.abs().max()


@pytest.mark.slow
def test_pare_generate_runs_an_onnx_folder(quantized_run, capsys):
    out = _onnx_folder(quantized_run / "run" / "stages" / "02-rtn3-asym", quantized_run / "onnx-gen")
    assert main(["generate", str(out), "--prompt", "A list is", "--max-new-tokens", "4"]) == 0
    printed = capsys.readouterr().out
    assert "[onnx-gen, onnxruntime] A list is" in printed and "4 new tokens" in printed


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_other_layouts_export_with_their_cache(tmp_path, arch):
    """GPT-2 (Conv1D read as Linear, learnt positions) and Qwen2 (biased q/k/v, grouped K/V)."""
    recipe = lm_recipe({"hf": str(tiny_causal_lm(tmp_path / arch, arch))})
    recipe["stages"] = [
        {
            "technique": "quantize",
            "name": "int4",
            "mode": "weight_only",
            "granularity": "per_group",
            "group_size": 16,
        }
    ]
    pare.run(recipe, tmp_path / "run")
    folder = tmp_path / "run" / "stages" / "01-int4"
    out = _onnx_folder(folder, tmp_path / "onnx")
    assert len(_nbits_nodes(out)) == (9 if arch == "gpt2" else 15)  # GPT-2: 4 per block + head
    _same_as_the_stage(folder, out)


def test_layers_without_a_block_layout_are_refused_by_name():
    w = torch.randn(8, 48)
    for spec, expected in [
        (WeightSpec(bits=4, granularity="per_group", group_size=24), "group_size=24"),
        (WeightSpec(bits=4, granularity="per_tensor"), "per_tensor"),
        (WeightSpec(bits=4, scheme="pow2"), "scheme 'pow2'"),
    ]:
        with pytest.raises(UnsupportedModelError, match=expected):
            matmul_nbits_tensors(quantize_weight(w, spec), spec, tuple(w.shape), "blocks.0.fc")
