"""Options of the ``quantize`` technique."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from pare.config import Config, from_dict, param, parse_size, to_dict
from pare.errors import ConfigError

Scheme = Literal["affine", "pow2", "codebook", "fixed_point", "binary", "ternary", "fp16", "bf16"]
DEFAULT_BITS = {"binary": 1, "ternary": 2, "fp16": 16, "bf16": 16}
OVERRIDE_KEYS = {"bits", "scheme", "skip", "symmetric", "granularity", "group_size"}


@dataclass(frozen=True)
class MixedPrecisionConfig(Config):
    """Per-layer bit widths chosen from measured sensitivity, under a size budget or a maximum
    validation drop (points; percent of perplexity for language models)."""

    bits: list[int] = field(default_factory=lambda: [2, 4, 8])
    max_drop: float | None = param(None, ge=0)
    size_budget_bytes: int | None = param(None, ge=1)

    def check(self) -> list[str]:
        problems = []
        if (self.max_drop is None) == (self.size_budget_bytes is None):
            problems.append(
                "mixed: give exactly one of max_drop (points of the validation metric) or size_budget_bytes"
            )
        bad = [b for b in self.bits if not 2 <= b <= 8]
        if bad or not self.bits:
            problems.append(f"mixed.bits: {self.bits!r} must be a non-empty list of widths from 2 to 8")
        return problems


@dataclass(frozen=True)
class QuantizeConfig(Config):
    """Quantize weights (and activations) of Conv2d and Linear layers."""

    renamed = {"qat_epochs": "finetune_epochs", "qat_lr": "finetune_lr"}

    mode: Literal["weight_only", "static", "dynamic", "qat"] = "static"
    scheme: Scheme = "affine"
    bits: int | None = (
        None  # default: 8 (affine, pow2, codebook, fixed_point), 1 binary, 2 ternary, 16 fp16/bf16
    )
    symmetric: bool = True
    granularity: Literal["per_tensor", "per_channel", "per_group"] = "per_channel"
    group_size: int = param(32, ge=2)
    frac_bits: int | None = param(None, ge=0)
    weight_range: Literal["minmax", "mse", "percentile"] = "minmax"
    range_method: Literal["minmax", "moving_average", "percentile", "mse", "entropy"] = "minmax"
    percentile: float = param(99.99, gt=50, le=100)
    momentum: float = param(0.9, ge=0, lt=1)
    calibration_samples: int = param(512, ge=1)
    layers: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)
    finetune_epochs: int = param(3, ge=1)  # qat: training epochs with fake quantization
    finetune_lr: float = param(1e-4, gt=0)
    sensitivity: bool = False
    mixed: MixedPrecisionConfig | None = None
    entropy_coding: bool = False  # packed artifact (weight_only) compressed losslessly (xz)
    embeddings: bool = True  # dynamic: token tables stored as int8 rows (a Gather of int8 + scale)
    method: Literal["rtn", "gptq", "awq"] = "rtn"  # weight_only: round to nearest, or calibrated
    damp: float = param(0.01, gt=0, lt=1)  # gptq: diagonal damping, share of the mean diagonal
    act_order: bool = True  # gptq: quantize columns in order of decreasing input energy
    # gptq: aim each layer at the float model's outputs, correcting what earlier quantized layers
    # changed in its inputs (false: the original GPTQ objective, the layer's own output)
    input_drift: bool = True
    # gptq/awq: calibrate with the decoder blocks on disk, one in memory at a time, and the
    # activations between blocks on disk too when they do not fit (e.g. "300MB", "2GB")
    max_memory: str | int | None = None
    # weight_only on a pretrained causal LM ships model.matmulnbits.onnx (MatMulNBits, KV cache):
    # the kernel's accuracy level (0: float compute, exact; 4: inputs quantized to int8 per block)
    accuracy_level: int = param(0, ge=0, le=4)

    @property
    def weight_bits(self) -> int:
        return self.bits if self.bits is not None else DEFAULT_BITS.get(self.scheme, 8)

    @property
    def packed(self) -> bool:
        """Weights become low-bit codes in pare's packed file (weight-only, or QAT below 8 bits)."""
        return self.mode == "weight_only" or (self.mode == "qat" and self.weight_bits < 8)

    @property
    def folds_batchnorm(self) -> bool:
        """The graph is traced and BatchNorm folded first (the modes that export to ONNX Runtime)."""
        return self.mode in ("static", "qat", "dynamic")

    @property
    def int8_tables(self) -> bool:
        """Dynamic mode stores token embedding tables as int8 rows too."""
        return self.mode == "dynamic" and self.embeddings

    @property
    def runs_in_onnxruntime(self) -> bool:
        """Static, dynamic and 8-bit QAT models ship as int8 ONNX graphs."""
        return self.mode in ("static", "dynamic") or (self.mode == "qat" and self.weight_bits == 8)

    def check(self) -> list[str]:
        problems = []
        b, s = self.weight_bits, self.scheme
        if s in ("affine", "pow2", "codebook", "fixed_point") and not 2 <= b <= 8:
            problems.append(f"bits: {b!r} is out of range for scheme {s!r}; use 2 to 8")
        if s in DEFAULT_BITS and self.bits is not None and self.bits != DEFAULT_BITS[s]:
            problems.append(
                f"bits: scheme {s!r} is {DEFAULT_BITS[s]}-bit by definition; remove bits (got {self.bits!r})"
            )
        if s == "fixed_point" and self.frac_bits is not None and self.frac_bits > b - 1:
            problems.append(
                f"frac_bits: {self.frac_bits} leaves no sign bit in {b} bits; use at most {b - 1}"
            )
        if self.mode in ("static", "dynamic"):
            if s != "affine" or b != 8:
                problems.append(
                    f"mode: {self.mode!r} runs in ONNX Runtime's int8 kernels and needs scheme 'affine' with 8 bits "
                    f"(got scheme={s!r}, bits={b}); use mode: weight_only for other schemes and widths"
                )
            if not self.symmetric or self.granularity == "per_group":
                problems.append(
                    f"mode: {self.mode!r} uses symmetric per-channel or per-tensor int8 weights; "
                    f"got symmetric={self.symmetric}, granularity={self.granularity!r}"
                )
        if self.mode == "qat" and s in ("codebook", "fp16", "bf16"):
            problems.append(
                f"mode: 'qat' cannot train through scheme {s!r}; use affine, pow2, fixed_point, binary or ternary"
            )
        if self.mixed is not None and self.mode != "weight_only":
            problems.append(
                f"mixed: mixed precision chooses sub-8-bit widths and needs mode: weight_only (got {self.mode!r})"
            )
        if self.entropy_coding and self.runs_in_onnxruntime:
            problems.append(
                f"entropy_coding: mode {self.mode!r} ships an ONNX graph that ONNX Runtime loads as is; "
                f"entropy coding applies to pare's packed artifact (mode: weight_only)"
            )
        if self.method != "rtn" and (
            self.mode != "weight_only" or s != "affine" or self.granularity == "per_tensor"
        ):
            problems.append(
                f"method: {self.method!r} chooses weight codes from calibration data and needs mode: weight_only, "
                f"scheme: affine, per_channel or per_group (got mode={self.mode!r}, scheme={s!r}, "
                f"granularity={self.granularity!r})"
            )
        if self.max_memory is not None:
            if self.method == "rtn":
                problems.append(
                    f"max_memory: {self.max_memory!r} bounds calibration, which method 'rtn' does not do; "
                    f"use method: gptq or awq, or remove max_memory"
                )
            try:
                if parse_size(self.max_memory, "max_memory") <= 0:
                    problems.append(f"max_memory: {self.max_memory!r} must be a positive size such as 300MB")
            except ConfigError as e:
                problems.extend(e.problems)
        if self.mixed is not None and s != "affine":
            problems.append(f"mixed: mixed precision uses the affine scheme (got {s!r})")
        for pattern, opts in self.overrides.items():
            if not isinstance(opts, dict):
                problems.append(
                    f"overrides.{pattern}: expected a mapping such as {{bits: 8}} or {{skip: true}}, got {opts!r}"
                )
                continue
            unknown = set(opts) - OVERRIDE_KEYS
            if unknown:
                problems.append(
                    f"overrides.{pattern}: unknown option(s) {sorted(unknown)}; valid: {sorted(OVERRIDE_KEYS)}"
                )
            if self.mode in ("static", "dynamic") and opts.get("bits", 8) != 8:
                problems.append(
                    f"overrides.{pattern}.bits: mode {self.mode!r} runs 8-bit only; use skip: true to keep a layer in float"
                )
            elif not unknown and not opts.get("skip"):
                problems.extend(self._override_problems(pattern, opts))
        return problems

    def _override_problems(self, pattern: str, opts: dict) -> list[str]:
        """An override is checked as the stage's own options with it applied: the same types,
        ranges and scheme/bits rules."""
        layer = {**to_dict(self), "overrides": {}, "mixed": None}
        if "scheme" in opts:  # a new scheme brings its own default width
            layer["bits"] = None
        layer.update({k: v for k, v in opts.items() if k != "skip"})
        try:
            from_dict(QuantizeConfig, layer)
        except ConfigError as e:
            return [f"overrides.{pattern}.{p}" for p in e.problems]
        return []
