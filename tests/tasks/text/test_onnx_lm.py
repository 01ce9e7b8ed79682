"""Stages of a pretrained causal LM written as ONNX with a KV cache and MatMulNBits layers
(``pare checkpoint --format onnx``), run in ONNX Runtime to pare's own logits and continuations."""

from __future__ import annotations

import onnx
import pytest
import torch
from onnx import numpy_helper

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
    assert greedy(ort, tok, prompt, 12, batch=4)["text"] == greedy(ours, tok, prompt, 12)["text"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "layers"), [("00-baseline", 0), ("01-gptq4", 15), ("02-rtn3-asym", 14), ("04-awq4", 15)]
)
def test_onnx_runtime_runs_the_stage_with_its_own_codes(quantized_run, stage, layers):
    folder = quantized_run / "run" / "stages" / stage
    out = _onnx_folder(folder, quantized_run / f"onnx-{stage}")
    nodes = _nbits_nodes(out)
    assert len(nodes) == layers  # 7 Linear layers per block, 2 blocks (+ the head for GPTQ)
    if layers:
        attrs = {a.name: a.i for a in nodes[0].attribute}
        # 3-bit codes run in the 4-bit kernel (exact, as big as 4 bits); blocks are pare's groups
        assert attrs["bits"] == 4 and attrs["block_size"] == (32 if stage == "02-rtn3-asym" else 16)
        assert (len(nodes[0].input) == 4) is (stage == "02-rtn3-asym")  # zero points when asymmetric
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    # AWQ: every layer's input times 1/s, and the tied table's gathered rows too
    scaled = [n for n in graph.node if n.op_type == "Mul" and n.input[1].endswith(".input_scale_inv")]
    assert len(scaled) == (15 if stage == "04-awq4" else 0)
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


def _initializer_bytes(path) -> int:
    return sum(numpy_helper.to_array(i).nbytes for i in onnx.load(str(path)).graph.initializer)


@pytest.mark.parametrize(("bits", "symmetric", "awq"), [(4, True, False), (8, False, False), (4, True, True)])
def test_a_tied_table_gathers_its_rows_from_the_head_codes(tmp_path, bits, symmetric, awq):
    from transformers import LlamaForCausalLM

    from pare.recipes.checkpoint import lm_checkpoint
    from pare.techniques.quantize.apply import quant_layers, wrap_layers
    from pare.techniques.quantize.tied import follow_quantized_heads

    folder = tiny_causal_lm(tmp_path / "tied", "llama", tie_word_embeddings=True)
    tok = load_tokenizer(folder)
    lm = LlamaForCausalLM.from_pretrained(folder).eval()
    assert lm.lm_head.weight is lm.model.embed_tokens.weight
    table = list(lm.model.embed_tokens.weight.shape)
    lm_checkpoint(CausalLM(LlamaForCausalLM.from_pretrained(folder).eval()), tok, tmp_path / "fp32", "onnx")
    spec = WeightSpec(bits=bits, symmetric=symmetric, granularity="per_group", group_size=16, full_range=True)
    names = [n for n, m in lm.named_modules() if isinstance(m, torch.nn.Linear)]
    wrap_layers(lm, dict.fromkeys(names, spec))
    if awq:  # AWQ's form: codes of W x s, one scale per input channel, the weight divided back
        from pare.formats.schemes import QuantizedWeight

        head = quant_layers(lm)["lm_head"]
        s_in = torch.linspace(0.5, 2.0, head.base.weight.shape[1])
        q = quantize_weight(head.base.weight.detach() * s_in, spec)
        head.pin(QuantizedWeight(q.dequantized / s_in, q.codes, {**q.params, "input_scale": s_in}, bits))
    codes_before = quant_layers(lm)["lm_head"].quantized.codes.clone()
    assert follow_quantized_heads(lm) == {"model.embed_tokens": "lm_head"}
    head = quant_layers(lm)["lm_head"]
    assert torch.equal(head.quantized.codes, codes_before)  # pinned: rounding again changes nothing
    assert torch.equal(lm.model.embed_tokens.weight, head.weight_q)
    ids = torch.randint(0, table[0], (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = lm(ids).logits
    lm_checkpoint(CausalLM(lm), tok, tmp_path / "q", "onnx")  # the path `pare checkpoint` takes
    graph = onnx.load(str(tmp_path / "q" / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("GatherBlockQuantized") == 1 and "Gather" not in ops
    # AWQ: the head's input and the gathered rows, times 1/s
    scaled = [n for n in graph.node if n.op_type == "Mul" and n.input[1].endswith("input_scale_inv")]
    assert len(scaled) == (2 if awq else 0)
    assert ops.count("MatMulNBits") == len(names)
    # the vocabulary x hidden matrix is in the file once, as codes: no float table left
    assert not [i.name for i in graph.initializer if list(i.dims) == table]
    # weights only: at this size the graph itself (nodes, shapes) is most of the file
    weights = _initializer_bytes(tmp_path / "q" / "model.onnx") / _initializer_bytes(
        tmp_path / "fp32" / "model.onnx"
    )
    assert weights < (0.3 if bits == 4 else 0.45)
    got = OrtCausalLM(tmp_path / "q" / "model.onnx")(ids).logits
    assert (got - want).abs().max() < 1e-4
