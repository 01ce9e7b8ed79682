"""Quantization schemes, ranges and the packed format: numbers, bounds and round trips."""

import numpy as np
import pytest
import torch

from pare.formats.packed import dequantize, pack_bits, unpack_bits
from pare.formats.schemes import WeightSpec, affine_params, fake_quant, qrange, quantize_weight
from pare.techniques.quantize.observers import Observer


@pytest.fixture
def w():
    torch.manual_seed(0)
    return torch.randn(16, 8, 3, 3) * torch.linspace(0.1, 2, 16)[:, None, None, None]


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("granularity", ["per_tensor", "per_channel", "per_group"])
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("full_range", [False, True])
def test_affine_error_bound_range_and_idempotence(w, symmetric, granularity, bits, full_range):
    spec = WeightSpec(
        bits=bits, symmetric=symmetric, granularity=granularity, group_size=24, full_range=full_range
    )
    q = quantize_weight(w, spec)
    rows = {"per_tensor": 1, "per_channel": 16, "per_group": 16 * 72 // 24}[granularity]
    scale = q.params["scale"]
    assert scale.shape == (rows,)
    # min-max ranges never clip: every value is within half a step of its code's value; an
    # asymmetric grid is shifted by up to half a step more when its zero point is rounded
    step = scale.abs().repeat_interleave(w.numel() // rows).reshape(w.shape)
    bound = step / 2 if symmetric and not full_range else step
    assert torch.all((q.dequantized - w).abs() <= bound + 1e-6)
    qmin, qmax = qrange(bits, symmetric, full_range)
    assert q.codes.min() >= qmin and q.codes.max() <= qmax
    # quantize-dequantize is idempotent: dequantized values are grid points of their own grid
    rows_view = q.dequantized.reshape(rows, -1)
    again = fake_quant(rows_view, scale[:, None], q.params["zero_point"][:, None], qmin, qmax)
    assert torch.allclose(again, rows_view, atol=1e-6)
    if symmetric:  # and the largest magnitude is a grid point, so re-quantizing finds the same grid
        assert torch.allclose(quantize_weight(q.dequantized, spec).dequantized, q.dequantized, atol=1e-6)
    assert len(torch.unique(rows_view[0])) <= 2**bits
    # the packed form decodes to exactly the simulated weights
    assert torch.allclose(dequantize(q.codes, q.params, spec, w.shape), q.dequantized)


def test_per_channel_beats_per_tensor_on_uneven_channels(w):
    err = {
        g: (quantize_weight(w, WeightSpec(bits=4, granularity=g)).dequantized - w).pow(2).mean()
        for g in ("per_tensor", "per_channel")
    }
    assert err["per_channel"] < 0.5 * err["per_tensor"]


def test_mse_weight_range_lowers_error_at_low_bits(w):
    w = w.clone()
    w[0, 0, 0, 0] = 25.0  # an outlier stretches the min-max range
    spec = WeightSpec(bits=3, granularity="per_tensor")
    minmax = (quantize_weight(w, spec).dequantized - w).pow(2).mean()
    mse = (
        (quantize_weight(w, WeightSpec(bits=3, granularity="per_tensor", range_method="mse")).dequantized - w)
        .pow(2)
        .mean()
    )
    assert mse < 0.7 * minmax


def test_affine_params_include_zero_exactly():
    scale, zero = affine_params(torch.tensor([0.5]), torch.tensor([3.0]), 8, symmetric=False)
    assert zero.item() == 0 and scale.item() == pytest.approx(3.0 / 255)


def test_power_of_two_levels(w):
    spec = WeightSpec(scheme="pow2", bits=4)
    q = quantize_weight(w, spec)
    nz = q.dequantized[q.dequantized != 0].abs()
    assert torch.allclose(torch.log2(nz), torch.round(torch.log2(nz)))  # every level is 2^k
    for c in range(16):
        levels = q.dequantized[c].abs().unique()
        assert len(levels[levels > 0]) <= 2 ** (4 - 1) - 1
    assert torch.equal(quantize_weight(q.dequantized, spec).dequantized, q.dequantized)
    assert torch.allclose(dequantize(q.codes, q.params, spec, w.shape), q.dequantized)


def test_codebook_has_exactly_2_to_the_bits_entries(w):
    spec = WeightSpec(scheme="codebook", bits=3)
    q = quantize_weight(w, spec)
    assert q.params["codebook"].numel() == 8 and len(q.dequantized.unique()) == 8
    # k-means places levels where the weights are: lower error than a uniform 3-bit grid
    uniform = quantize_weight(w, WeightSpec(bits=3, granularity="per_tensor"))
    assert (q.dequantized - w).pow(2).mean() < (uniform.dequantized - w).pow(2).mean()
    assert torch.equal(dequantize(q.codes, q.params, spec, w.shape), q.dequantized)


def test_fixed_point_q_format():
    w = torch.tensor([[0.3, -1.26, 1.9, -2.5]])
    q = quantize_weight(w, WeightSpec(scheme="fixed_point", bits=6, frac_bits=3))  # Q2.3
    assert torch.allclose(q.dequantized, torch.tensor([[0.25, -1.25, 1.875, -2.5]]))
    big = quantize_weight(torch.tensor([[10.0]]), WeightSpec(scheme="fixed_point", bits=6, frac_bits=3))
    assert big.dequantized.item() == 31 / 8  # saturates at the largest Q2.3 value
    auto = quantize_weight(w, WeightSpec(scheme="fixed_point", bits=8))  # max |w| 2.5 needs 2 integer bits
    assert auto.params["frac_bits"].item() == 5


def test_binary_and_ternary(w):
    b = quantize_weight(w, WeightSpec(scheme="binary"))
    for c in range(16):
        alpha = w[c].abs().mean()
        assert torch.allclose(b.dequantized[c].abs(), alpha.expand_as(w[c]))
        assert torch.equal(torch.sign(b.dequantized[c]), torch.where(w[c] >= 0, 1.0, -1.0))
    t = quantize_weight(w, WeightSpec(scheme="ternary"))
    assert all(len(t.dequantized[c].unique()) <= 3 for c in range(16))
    assert (t.dequantized == 0).float().mean() > 0.3  # the threshold zeroes the small weights


@pytest.mark.parametrize("scheme,dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_half_precision(w, scheme, dtype):
    q = quantize_weight(w, WeightSpec(scheme=scheme))
    assert torch.equal(q.dequantized, w.to(dtype).float()) and q.params["weight"].dtype == dtype


@pytest.mark.parametrize("bits", range(1, 9))
def test_bit_packing_round_trip_and_size(bits):
    values = np.random.default_rng(bits).integers(0, 2**bits, size=1001)
    packed = pack_bits(values, bits)
    assert packed.nbytes == -(-1001 * bits // 8)
    assert np.array_equal(unpack_bits(packed, bits, 1001), values)


def test_observers():
    rng = np.random.default_rng(0)
    batches = [torch.from_numpy(rng.normal(size=(64, 100)).astype(np.float32)) for _ in range(8)]
    batches[3][0, 0] = 40.0  # one outlier
    obs = {m: Observer(m) for m in ("minmax", "moving_average", "percentile", "mse", "entropy")}
    for b in batches:
        for o in obs.values():
            o.update(b)
    lo, hi = obs["minmax"].range()
    assert hi == 40.0 and lo == pytest.approx(min(b.min().item() for b in batches))
    assert obs["moving_average"].range()[1] < 40.0  # the outlier batch is averaged down
    for name in ("percentile", "entropy"):
        assert obs[name].range()[1] < 10.0, name  # robust methods ignore the single outlier
    # MSE weighs the outlier's clipping error against everyone's rounding error: at 8 bits the
    # steps are fine enough to keep it, at 4 bits clipping it is cheaper
    assert obs["mse"].range(bits=4)[1] < 10.0 < obs["mse"].range(bits=8)[1] + 30
    relu = Observer("entropy")
    relu.update(torch.relu(batches[0]))
    assert relu.range()[0] == 0.0


def test_observer_rejects_nan():
    with pytest.raises(ValueError, match="non-finite"):
        Observer().update(torch.tensor([1.0, float("nan")]))


def test_full_range_symmetric_grid_puts_the_largest_magnitude_on_the_most_negative_code(w):
    full = quantize_weight(w, WeightSpec(bits=4, granularity="per_group", group_size=24, full_range=True))
    balanced = quantize_weight(w, WeightSpec(bits=4, granularity="per_group", group_size=24))
    rows, codes = w.reshape(-1, 24), full.codes.reshape(-1, 24)
    at_max = codes.gather(1, rows.abs().argmax(1, keepdim=True))
    assert torch.all(at_max == -8) and codes.max() <= 7
    # the scale's sign follows the extreme: a positive largest weight gets a negative scale
    extreme = rows.gather(1, rows.abs().argmax(1, keepdim=True)).squeeze(1)
    assert torch.all(torch.sign(full.params["scale"]) == -torch.sign(extreme))
    err = {k: (q.dequantized - w).pow(2).sum() for k, q in (("full", full), ("balanced", balanced))}
    assert err["full"] < 0.9 * err["balanced"]  # 16 levels over the range, not 15
