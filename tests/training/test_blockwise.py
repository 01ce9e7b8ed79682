"""Layer-by-layer calibration: running one block at a time gives what whole-model passes give,
at a cost linear in the number of blocks."""

from __future__ import annotations

import copy

import pytest
import torch

from pare.formats.schemes import WeightSpec
from pare.models.zoo import GPT
from pare.techniques.quantize.apply import wrap_layers
from pare.techniques.quantize.calibrated import gptq
from pare.training.blockwise import execution_order, find_blocks, layer_by_layer, layer_groups, model_feed
from pare.training.calibration import group_stats


def gpt(depth=3):
    torch.manual_seed(0)
    return GPT((16,), 50, dim=32, depth=depth, heads=2, mlp_ratio=2).eval()


def batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 50, (8, 16), generator=g) for _ in range(3)]


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    from pare.models.hf import CausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return CausalLM(LlamaForCausalLM(config)).eval()


def gptq_all(model, names, feeds, reference=None):
    """GPTQ 3-bit on every layer in the order ``feeds`` gives them; the codes per layer."""
    spec = WeightSpec(bits=3, granularity="per_group", group_size=16, full_range=True)
    codes = {}
    for group, feed in feeds:
        for name, st in group_stats(feed, {n: model.get_submodule(n) for n in group}).items():
            q = gptq(model.get_submodule(name).base.weight, st.hessian, spec, drift=st.drift)
            model.get_submodule(name).pin(q)
            codes[name] = q.codes
    return codes


@pytest.mark.parametrize("make", [gpt, llama], ids=["zoo-gpt", "hf-llama"])
@pytest.mark.parametrize("paired", [False, True], ids=["plain", "input-drift"])
def test_block_by_block_equals_whole_model_passes_per_layer(make, paired):
    spec = WeightSpec(bits=3, granularity="per_group", group_size=16, full_range=True)
    base = make()
    names = [n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)]
    data = batches()
    results = []
    for engine in ("blocks", "whole"):
        reference = copy.deepcopy(base) if paired else None
        model = wrap_layers(copy.deepcopy(base), dict.fromkeys(names, spec))
        if engine == "blocks":
            feeds = layer_by_layer(model, names, data, reference)
        else:  # the definition: every layer from whole-model passes, in execution order
            order = execution_order(model, names, data[0])
            feeds = (([n], model_feed(model, [n], data, reference, stop=False)) for n in order)
        results.append((gptq_all(model, names, feeds), model(data[0])))
    (blocks, out_blocks), (whole, out_whole) = results
    assert list(blocks) == list(whole) and len(blocks) == len(names)  # same layers, same order
    for name in names:
        # same codes (a code may flip where the input moved by float rounding alone)
        assert (blocks[name] != whole[name]).float().mean() < 1e-3, name
    assert torch.allclose(out_blocks, out_whole, atol=1e-3)


def test_blocks_found_and_run_a_linear_number_of_times():
    model = gpt(depth=4)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    order = execution_order(model, names, batches()[0])
    assert find_blocks(model, order) == [f"blocks.{i}" for i in range(4)]
    calls = {"model": 0, "block": 0}
    model.register_forward_pre_hook(lambda m, a: calls.__setitem__("model", calls["model"] + 1))
    model.blocks[3].register_forward_pre_hook(lambda m, a: calls.__setitem__("block", calls["block"] + 1))
    for _, feed in layer_by_layer(model, names, batches()):
        feed(lambda *x: None)
    per_block = 4 + 1  # attention qkv, proj, two MLP layers; then the block's outputs
    # whole-model passes: one for the order, one for the capture, one for the head; per batch
    assert calls["model"] == 1 + 3 + 3
    assert calls["block"] == calls["model"] + per_block * 3  # in the whole-model passes, then alone


def test_layers_reading_one_tensor_form_one_group_and_passes_stop_early():
    model = llama()
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    groups, repeated = layer_groups(model, names, batches()[0])
    block = "model.model.layers.0."
    assert groups[:4] == [
        [block + p for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")],
        [block + "self_attn.o_proj"],
        [block + "mlp.gate_proj", block + "mlp.up_proj"],
        [block + "mlp.down_proj"],
    ]
    assert groups[-1] == ["model.lm_head"] and not repeated
    ran = []
    mlp = model.model.model.layers[2].mlp
    mlp.register_forward_pre_hook(lambda m, a: ran.append(1))
    for group, feed in layer_by_layer(model, names, batches()):
        before = len(ran)
        feed(lambda *x: None)
        if group[0].startswith("model.model.layers.2.self_attn"):
            assert len(ran) == before  # the pass stopped before the block's MLP


def test_layers_between_blocks_fall_back_to_whole_model_passes():
    class Interleaved(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(4, 4)) for _ in range(2)])
            self.middle = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.blocks[1](self.middle(self.blocks[0](x)))

    model = Interleaved()
    names = ["blocks.0.0", "middle", "blocks.1.0"]
    assert find_blocks(model, names) is None
    assert [g for g, _ in layer_by_layer(model, names, [torch.randn(2, 4)])] == [[n] for n in names]


def test_layers_of_one_group_share_the_products_of_their_input(monkeypatch):
    from pare.training import calibration

    model = llama()
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    computed = []
    real = calibration.products
    monkeypatch.setattr(calibration, "products", lambda *x: computed.append(1) or real(*x))
    group, feed = next(layer_by_layer(model, names, batches(), copy.deepcopy(model)))
    stats = group_stats(feed, {n: model.get_submodule(n) for n in group})
    assert len(group) == 3 and len(computed) == len(batches())  # q, k, v: once per batch
    q, k, v = stats.values()
    assert q is not k and torch.equal(q.xtx, k.xtx) and torch.equal(q.drift, v.drift) and q.rows == v.rows
    alone = calibration.InputStats(32)
    for x in model_feed_inputs(model, group[1]):
        alone.update(x)
    torch.testing.assert_close(alone.hessian, k.hessian)


def model_feed_inputs(model, name):
    seen = []
    model_feed(model, [name], batches())(lambda n, x: seen.append(x))
    return seen
