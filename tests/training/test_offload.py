"""Calibration with the blocks on disk: the same codes as in memory, one block held at a time,
activations spilled when they do not fit, a budget below one block refused by name, and an
interrupted calibration resumed after its last finished block."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from safetensors.torch import save_file

from pare.config import from_dict, to_dict
from pare.errors import ConfigError, UnsupportedModelError
from pare.formats.schemes import WeightSpec
from pare.techniques.quantize.apply import _calibrate, _memory_plan, calibrate_offloaded, wrap_layers
from pare.techniques.quantize.config import QuantizeConfig
from pare.techniques.quantize.layers import QuantLayer
from pare.training.blockwise import Offload
from pare.training.offload import PeakRSS, TensorFiles, block_tensors
from tests.training.test_blockwise import batches, llama

SPEC = WeightSpec(bits=3, granularity="per_group", group_size=16, full_range=True)
BLOCKS = [f"model.model.layers.{i}" for i in range(3)]


def config(max_memory, drift=False):
    return from_dict(
        QuantizeConfig,
        {
            "mode": "weight_only",
            "bits": 3,
            "granularity": "per_group",
            "group_size": 16,
            "method": "gptq",
            "input_drift": drift,
            "max_memory": max_memory,
        },
    )


def specs(model):
    return {n: SPEC for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def codes(model):
    return {n: m.pinned_codes.clone() for n, m in model.named_modules() if isinstance(m, QuantLayer)}


def in_memory(base, drift):
    model = copy.deepcopy(base)
    reference = copy.deepcopy(base) if drift else None
    chosen = specs(model)
    wrap_layers(model, chosen)
    _calibrate(model, chosen, batches(), config("1GB", drift), reference)
    return model


@pytest.mark.parametrize("drift", [False, True], ids=["plain", "input-drift"])
@pytest.mark.parametrize("spill", [False, True], ids=["activations-in-memory", "activations-on-disk"])
def test_blocks_on_disk_give_the_codes_of_calibration_in_memory(tmp_path, drift, spill, monkeypatch):
    base = llama()
    expected = in_memory(base, drift)
    model = copy.deepcopy(base)
    plan = _memory_plan(
        model, BLOCKS, [m for m in model.modules() if isinstance(m, torch.nn.Linear)], 2 if drift else 1
    )
    budget = plan["floor_bytes"] + (1 if spill else 2**30)  # no room for activations, or plenty
    if spill:  # the forward pass's measured memory (a few pages here) left out of the budget
        monkeypatch.setattr(Offload, "measure", lambda self, run, sizes: None)
    disk, errors, memory = calibrate_offloaded(
        model, specs(model), batches(), config(budget, drift), tmp_path
    )
    assert memory["activations_on_disk"] is spill and memory["activation_bytes"] > 0
    assert memory["peak_rss_bytes"] > 0 and memory["max_memory_bytes"] == budget
    for b in BLOCKS:  # between blocks and after the last: nothing of them in memory
        assert all(t.numel() == 0 for t in block_tensors(model.get_submodule(b)).values())
        assert (tmp_path / "quantized" / f"{b}.safetensors").is_file()
    disk.load_all()
    got, want = codes(model), codes(expected)
    assert list(got) == list(want) and len(got) == 7 * 3 + 1  # every layer, the head too
    for n in want:
        assert torch.equal(got[n], want[n]), n
    assert set(errors) == set(want)
    x = batches()[0]
    torch.testing.assert_close(model(x), expected(x))


def test_blocks_stream_from_a_checkpoint_into_a_model_on_the_meta_device(tmp_path):
    base = llama()
    expected = in_memory(base, drift=False)
    state = {k: v.contiguous() for k, v in base.model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(tmp_path / "model.safetensors"))  # as an HF checkpoint names them
    with torch.device("meta"):
        model = llama()
    # what lies outside the blocks is read in whole; the blocks stay on the meta device
    outside = {k: v for k, v in state.items() if not k.startswith("model.layers.")}
    model.model.load_state_dict(outside, strict=False, assign=True)
    model.model.lm_head.weight = torch.nn.Parameter(base.model.lm_head.weight.detach().clone())
    model.model.model.rotary_emb = copy.deepcopy(base.model.model.rotary_emb)
    source = TensorFiles(tmp_path / "model.safetensors", prefix="model.")
    disk, _, _ = calibrate_offloaded(
        model, specs(model), batches(), config("1GB"), tmp_path / "work", source=source
    )
    disk.load_all()
    got, want = codes(model), codes(expected)
    for n in want:
        assert torch.equal(got[n], want[n]), n
    assert not list(tmp_path.glob("work/quantized/*.tmp"))  # every block written whole


def test_a_budget_below_one_block_is_refused_with_the_minimum(tmp_path):
    model = llama()
    with pytest.raises(
        ConfigError,
        match=r"max_memory: '10KB' is less than one block needs: .*"
        r"block 'model.model.layers.0'.*raise max_memory to at least",
    ):
        calibrate_offloaded(model, specs(model), batches(), config("10KB"), tmp_path)
    assert not any(tmp_path.iterdir())  # refused before anything was written
    assert all(t.numel() for t in model.state_dict().values())  # and the model left whole


def test_a_budget_below_one_blocks_forward_pass_is_refused_before_any_block_is_calibrated(tmp_path):
    """The forward pass of one calibration batch through a block (here attention scores of 16 x 4
    heads x 64^2 floats are 1 MiB; 0.9 MB and more measured) is measured after the capture and
    counted against the budget."""
    model = llama()
    chosen = specs(model)
    plan = _memory_plan(model, BLOCKS, [model.get_submodule(n) for n in chosen], 1)
    long = [torch.randint(0, 50, (16, 64), generator=torch.Generator().manual_seed(2))]
    with pytest.raises(
        ConfigError,
        match=r"less than calibration needs: .* its forward pass on a calibration batch, measured at "
        r"(0\.[1-9]|[1-9][0-9]*\.[0-9]) MB .*raise max_memory to at least",  # a measure, not 0
    ):
        calibrate_offloaded(model, chosen, long, config(plan["floor_bytes"] + 4096), tmp_path)
    assert not (tmp_path / "progress.json").exists()  # no block was calibrated


def test_max_memory_options_are_checked():
    with pytest.raises(ConfigError, match="max_memory: '3 apples' is not a size"):
        config("3 apples")
    with pytest.raises(ConfigError, match="bounds calibration, which method 'rtn' does not do"):
        from_dict(QuantizeConfig, {"mode": "weight_only", "max_memory": "1GB"})
    assert config("1.5GB").max_memory == "1.5GB"


def test_a_model_without_repeated_blocks_is_named(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    with pytest.raises(UnsupportedModelError, match="needs the layers in a list of repeated blocks"):
        calibrate_offloaded(model, {"0": SPEC, "2": SPEC}, [torch.randn(4, 8)], config("1GB"), tmp_path)


def counting_gptq(monkeypatch, stop_at: str | None = None) -> list[str]:
    """Record the layers GPTQ runs on; with ``stop_at``, interrupt at that layer (Ctrl-C)."""
    module = sys.modules[calibrate_offloaded.__module__]
    real, calls = module.gptq, []

    def gptq(*args, name, **kwargs):
        if name == stop_at:
            raise KeyboardInterrupt
        calls.append(name)
        return real(*args, name=name, **kwargs)

    monkeypatch.setattr(module, "gptq", gptq)
    return calls


@pytest.mark.parametrize("drift", [False, True], ids=["plain", "input-drift"])
def test_an_interrupted_calibration_resumes_after_its_last_finished_block(tmp_path, monkeypatch, drift):
    base = llama()
    expected = in_memory(base, drift)
    with monkeypatch.context() as m:
        first = counting_gptq(m, stop_at=f"{BLOCKS[2]}.mlp.up_proj")  # midway through the last block
        with pytest.raises(KeyboardInterrupt):
            calibrate_offloaded(copy.deepcopy(base), specs(base), batches(), config("1GB", drift), tmp_path)
    assert len(first) == 2 * 7 + 5  # two blocks finished, five layers of the third (q k v o gate)
    again = counting_gptq(monkeypatch)
    model = copy.deepcopy(base)
    disk, errors, _ = calibrate_offloaded(model, specs(model), batches(), config("2GB", drift), tmp_path)
    # a new budget changes no code: the finished blocks are kept; the third block and the head run
    assert again == [n for n in codes(expected) if not n.startswith((BLOCKS[0] + ".", BLOCKS[1] + "."))]
    assert len(again) == 7 + 1
    disk.load_all()
    got, want = codes(model), codes(expected)
    assert list(got) == list(want)
    for n in want:
        assert torch.equal(got[n], want[n]), n
    assert set(errors) == set(want)  # the finished blocks' errors come from the record


def test_a_record_from_other_options_is_not_reused(tmp_path, monkeypatch, capsys):
    base = llama()
    with monkeypatch.context() as m:
        counting_gptq(m, stop_at=f"{BLOCKS[2]}.self_attn.q_proj")
        with pytest.raises(KeyboardInterrupt):
            calibrate_offloaded(copy.deepcopy(base), specs(base), batches(), config("1GB"), tmp_path)
    other = from_dict(QuantizeConfig, {**to_dict(config("1GB")), "damp": 0.05})
    calls = counting_gptq(monkeypatch)
    calibrate_offloaded(copy.deepcopy(base), specs(base), batches(), other, tmp_path)
    assert len(calls) == 7 * 3 + 1  # every layer again
    assert (
        "is from another model, options or data; calibrating from the first block" in capsys.readouterr().err
    )


def test_a_peak_measured_inside_another_leaves_the_outer_peak_right():
    with PeakRSS() as outer:
        big = torch.ones(16 * 2**20)  # 64 MiB, its own pages, handed back when freed
        del big
        with PeakRSS() as inner:  # resets the high-water mark the outer one reads
            small = torch.ones(2 * 2**20)  # 8 MiB
            del small
    if not (outer.reset and inner.reset):
        pytest.skip("the high-water mark cannot be reset here (/proc/self/clear_refs)")
    assert outer.peak - outer.start >= 60 * 2**20
    assert 6 * 2**20 <= inner.peak - inner.start < 40 * 2**20
