"""Causal LMs in ONNX Runtime, with a KV cache and 4/8-bit weights that run as integers.

The graph takes ``input_ids`` (B, T), ``attention_mask`` (B, P + T) and the cache of the P
tokens before (``past.{i}.key``/``.value``, B x kv heads x P x head dim, P may be 0) and gives
``logits`` (B, T, V) and the cache after (``present.{i}.*``): prefill, decode and perplexity
windows all run the same graph.

Weight-only quantized Linear layers become ``com.microsoft.MatMulNBits`` nodes holding pare's
own codes and scales (block size = pare's group size; a per-channel layer repeats its scale over
blocks of 32 or more), so ONNX Runtime multiplies by the 4-bit (or 8-bit) weights directly: no
float copy of them is in the file. ONNX Runtime's CPU kernel takes 2, 4 and 8 bits; other widths
go into the next container (3-bit codes as 4-bit ones: exact, but as big as 4 bits).
``accuracy_level`` 0 computes in float32, 4 quantizes the inputs to int8 per block (faster).
A token table that holds a quantized layer's dequantized weight (a tied table that follows its
quantized head, ``pare.techniques.quantize.tied``) becomes ``com.microsoft.GatherBlockQuantized``
reading that layer's MatMulNBits codes and scales: the file holds the matrix once, in 4 or 8 bits.
AWQ's codes are of W x s (one scale per input channel): its layers read their input times 1/s
(a ``Mul``, K values per token, beside a K x N matmul), exact without folding s into the norm
before them, which the layers behind a shared norm could not do with scales of their own.

The float graph is exported first (torch.export through the dynamo exporter) and the MatMul of
each quantized layer is found by its weight: the exporter folds the transposed weight into a
nameless constant, which equals the layer's dequantized weight bit for bit.
"""

from __future__ import annotations

import functools
import hashlib
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn as nn

from pare.errors import UnsupportedModelError
from pare.export.hf_checkpoint import folder_bytes, new_folder, write_model_files
from pare.export.onnx import ort_session, quiet_export
from pare.formats.schemes import QuantizedWeight, WeightSpec
from pare.io import atomic_write

PROTOBUF_LIMIT = 2_000_000_000  # one .onnx file holds at most 2 GB; larger graphs keep data apart
STAGE_GRAPH = "model.matmulnbits.onnx"  # a weight-only LM stage as it ships (KV cache, MatMulNBits)


def cache_shape(config) -> tuple[int, int, int]:
    """(decoder blocks, K/V heads, head dim) of a transformers causal LM's cache."""
    heads = getattr(config, "num_attention_heads", None) or config.n_head
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = getattr(config, "hidden_size", None) or config.n_embd
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    return layers, kv_heads, head_dim


class _Step(nn.Module):
    """One forward pass over new tokens given the cache as plain tensors (what ONNX can carry)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids, attention_mask, past):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.lm.config)
        for i in range(len(past) // 2):
            cache.update(past[2 * i], past[2 * i + 1], i)
        out = self.lm(
            input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True
        )
        present = [t for layer in out.past_key_values.layers for t in (layer.keys, layer.values)]
        return (out.logits, *present)


def _names(layers: int, kind: str) -> list[str]:
    return [f"{kind}.{i}.{kv}" for i in range(layers) for kv in ("key", "value")]


def _export_float(lm: nn.Module, path: Path) -> None:
    """The float graph with its weights in a data file beside it (no 2 GB limit on the way)."""
    from torch.export import Dim

    layers, kv_heads, head_dim = cache_shape(lm.config)
    batch, seq, past = (
        Dim("batch", min=1, max=1024),
        Dim("seq", min=1, max=65536),
        Dim("past", min=0, max=65536),
    )
    # sizes other than 0 and 1, which torch.export would take for constants
    example_past = [torch.zeros(2, kv_heads, 2, head_dim) for _ in range(2 * layers)]
    ids = torch.zeros(2, 3, dtype=torch.long)
    with quiet_export():
        torch.onnx.export(
            _Step(lm).eval(),
            (ids, torch.ones(2, 5, dtype=torch.long), example_past),
            str(path),
            dynamo=True,
            input_names=["input_ids", "attention_mask", *_names(layers, "past")],
            output_names=["logits", *_names(layers, "present")],
            dynamic_shapes=(
                {0: batch, 1: seq},
                {0: batch, 1: Dim.AUTO},
                [{0: batch, 2: past}] * (2 * layers),
            ),
            external_data=True,
            verbose=False,
        )


def _container_bits(bits: int) -> int:
    return next(b for b in (2, 4, 8) if b >= bits)


def _pack_low_first(codes: np.ndarray, bits: int) -> np.ndarray:
    """(..., n) codes in [0, 2^bits) -> (..., n * bits / 8) bytes, the first code in the low bits."""
    per_byte = 8 // bits
    c = codes.astype(np.uint8).reshape(*codes.shape[:-1], -1, per_byte)
    out = np.zeros(c.shape[:-1], dtype=np.uint8)
    for j in range(per_byte):
        out |= c[..., j] << (bits * j)
    return out


def _block_size(spec: WeightSpec, in_features: int, name: str) -> int:
    if spec.granularity == "per_group":
        block = spec.group_size
    elif spec.granularity == "per_channel":  # one scale per row: any block that divides the row
        block = next((b for b in (128, 64, 32, 16) if in_features % b == 0), 0)
    else:
        block = 0
    if block < 16 or block & (block - 1) or in_features % block:
        raise UnsupportedModelError(
            f"{name}: MatMulNBits needs blocks of a power of two >= 16 dividing the {in_features} inputs; "
            f"this layer is {spec.granularity} with group_size={spec.group_size}: quantize it per_group "
            f"with group_size 32, 64 or 128"
        )
    return block


def matmul_nbits_tensors(q: QuantizedWeight, spec: WeightSpec, shape, name: str) -> dict:
    """MatMulNBits' B (N, blocks, bytes), scales (N * blocks) and, for asymmetric codes, packed
    zero points, plus its attributes, from pare's codes (out N, in K) and scales."""
    if spec.scheme != "affine":
        raise UnsupportedModelError(
            f"{name}: only RTN/GPTQ/AWQ integer grids run as MatMulNBits (scheme {spec.scheme!r}); "
            f"export this stage in float"
        )
    n, k = shape
    block = _block_size(spec, k, name)
    bits = _container_bits(spec.bits)
    blocks = k // block
    offset = 2 ** (bits - 1)  # signed (symmetric) codes shift to unsigned around the default zero
    codes = q.codes.reshape(n, k).numpy().astype(np.int64) + (offset if spec.symmetric else 0)
    scale = q.params["scale"].reshape(n, -1).numpy().astype(np.float32)
    scale = np.repeat(scale, blocks // scale.shape[1], axis=1)  # per-channel: the same in every block
    tensors = {
        "B": _pack_low_first(codes.reshape(n, blocks, block), bits),
        "scales": scale.reshape(-1),
    }
    if not spec.symmetric:
        zero = q.params["zero_point"].reshape(n, -1).numpy().astype(np.int64)
        zero = np.repeat(zero, blocks // zero.shape[1], axis=1)
        per_byte = 8 // bits
        padded = np.zeros((n, -(-blocks // per_byte) * per_byte), dtype=np.int64)
        padded[:, :blocks] = zero
        tensors["zero_points"] = _pack_low_first(padded, bits).reshape(-1)
        # GatherBlockQuantized reads one zero point per byte (its blocks lie along a last axis of 1)
        tensors["gather_zero_points"] = zero.astype(np.uint8).reshape(n, blocks, 1)
    if "input_scale" in q.params:  # AWQ: the codes are of W x s; the layer's input is divided by s
        tensors["input_scale_inv"] = (1 / q.params["input_scale"]).numpy().astype(np.float32)
    return {"tensors": tensors, "attrs": {"K": k, "N": n, "bits": bits, "block_size": block}}


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def _gather_quantized(node, prefix: str, nbits: dict, constant) -> list:
    """GatherBlockQuantized on the MatMulNBits codes (N, blocks, bytes per block) of the layer
    ``prefix``: rows of (blocks, block) dequantized, reshaped to rows of K."""
    from onnx import helper

    attrs = nbits["attrs"]
    n, blocks = attrs["N"], attrs["K"] // attrs["block_size"]
    out = node.output[0]
    awq = "input_scale_inv" in nbits["tensors"]  # the table's rows are W x s: times 1/s after
    inputs = [constant("B"), node.input[1], f"{out}.scales"]
    if "gather_zero_points" in nbits["tensors"]:
        inputs.append(constant("gather_zero_points"))
    return [
        helper.make_node(
            "Reshape",
            [constant("scales"), constant("gather_scale_shape", np.array([n, blocks, 1]))],
            [inputs[2]],
        ),
        helper.make_node(
            "GatherBlockQuantized",
            inputs,
            [f"{out}.blocks"],
            name=f"{prefix}.GatherBlockQuantized",
            domain="com.microsoft",
            gather_axis=0,
            quantize_axis=2,
            block_size=attrs["block_size"],
            bits=attrs["bits"],
        ),
        helper.make_node("Shape", [node.input[1]], [f"{out}.ids_shape"]),
        helper.make_node(
            "Concat",
            [f"{out}.ids_shape", constant("row_width", np.array([attrs["K"]]))],
            [f"{out}.shape"],
            axis=0,
        ),
        helper.make_node("Reshape", [f"{out}.blocks", f"{out}.shape"], [f"{out}.scaled" if awq else out]),
        *([helper.make_node("Mul", [f"{out}.scaled", constant("input_scale_inv")], [out])] if awq else []),
    ]


def _use_matmul_nbits(graph, lm: nn.Module, quantized: dict, accuracy_level: int) -> None:
    """Replace the MatMul of every quantized layer with MatMulNBits on its codes, and the Gather
    of a token table holding such a layer's weight with GatherBlockQuantized on the same codes,
    in place."""
    from onnx import helper, numpy_helper

    wanted, tables = {}, {}
    for name, (q, spec) in quantized.items():
        w = lm.get_parameter(name).detach()
        nbits = matmul_nbits_tensors(q, spec, tuple(w.shape), name)
        wanted[_digest(w.T.numpy())] = tables[_digest(w.numpy())] = (name, nbits)
    inits = {i.name: i for i in graph.initializer}
    added: set[str] = set()

    def constant(prefix: str, nbits: dict, part: str, value=None) -> str:
        """The initializer ``{prefix}.{part}``, added once however many nodes read it."""
        if f"{prefix}.{part}" not in added:
            array = nbits["tensors"][part] if value is None else value.astype(np.int64)
            graph.initializer.append(numpy_helper.from_array(array, f"{prefix}.{part}"))
            added.add(f"{prefix}.{part}")
        return f"{prefix}.{part}"

    found, nodes, replaced = set(), [], set()
    for node in graph.node:
        table = inits.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if table is not None and axis == 0 and len(table.dims) == 2:
            hit = tables.get(_digest(numpy_helper.to_array(table)))
            if hit is not None:
                name, nbits = hit
                prefix = name.removesuffix(".weight")
                replaced.add(node.input[0])
                nodes += _gather_quantized(node, prefix, nbits, functools.partial(constant, prefix, nbits))
                continue
        weight = inits.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        key = _digest(numpy_helper.to_array(weight)) if weight is not None and len(weight.dims) == 2 else None
        if key not in wanted:
            nodes.append(node)
            continue
        name, nbits = wanted[key]
        found.add(name)
        replaced.add(node.input[1])
        prefix = name.removesuffix(".weight")
        inputs = [node.input[0]]
        if "input_scale_inv" in nbits["tensors"]:  # AWQ: an elementwise Mul, K values per token
            inputs = [f"{prefix}.awq_input"]
            nodes.append(
                helper.make_node("Mul", [node.input[0], constant(prefix, nbits, "input_scale_inv")], inputs)
            )
        inputs += [
            constant(prefix, nbits, p) for p in ("B", "scales", "zero_points") if p in nbits["tensors"]
        ]
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                inputs,
                list(node.output),
                name=f"{prefix}.MatMulNBits",
                domain="com.microsoft",
                accuracy_level=accuracy_level,
                **nbits["attrs"],
            )
        )
    missing = sorted({n for n, _ in wanted.values()} - found)
    if missing:
        raise UnsupportedModelError(
            f"ONNX export: no MatMul reads the weight of {', '.join(missing[:4])}; these layers would "
            f"silently stay float"
        )
    del graph.node[:]
    graph.node.extend(nodes)
    # the float weights go, unless another node still reads one
    dropped = replaced - {i for node in nodes for i in node.input}
    kept = [i for i in graph.initializer if i.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def export_causal_lm(
    lm: nn.Module,
    path: str | Path,
    quantized: dict[str, tuple[QuantizedWeight, WeightSpec]] | None = None,
    accuracy_level: int = 0,
) -> int:
    """Write ``lm`` (a transformers causal LM; its Linear layers hold pare's dequantized weights)
    as one ONNX file with a KV cache; the parameters ``quantized`` names (-> codes and spec) as
    MatMulNBits. Returns the file's bytes (and its data file's, for graphs over 2 GB)."""
    import onnx
    from onnx import helper

    path = Path(path)
    lm.eval()
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        float_path = Path(tmp) / "float.onnx"
        try:
            _export_float(lm, float_path)
        except Exception as e:
            raise UnsupportedModelError(
                f"ONNX export of {type(lm).__name__} with a KV cache failed: {type(e).__name__}: {str(e)[:300]}"
            ) from None
        model = onnx.load(str(float_path))  # with its data: the weights are read to be matched
        if quantized:
            _use_matmul_nbits(model.graph, lm, quantized, accuracy_level)
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        large = model.ByteSize() > PROTOBUF_LIMIT
        data = path.with_name(path.name + ".data")

        def write(tmp_path: str) -> None:
            if large:
                onnx.save(model, tmp_path, save_as_external_data=True, location=data.name)
            else:
                onnx.save(model, tmp_path)

        atomic_write(path, write)
    return path.stat().st_size + (data.stat().st_size if large and data.exists() else 0)


class OrtCausalLM:
    """An exported causal LM in an ONNX Runtime session, called like the transformers model, so
    that pare's ``CausalLM`` wrapper, the language-model task and ``pare.generate.greedy`` run it
    unchanged: ``input_ids`` in, ``.logits`` (torch) and ``.past_key_values`` (the cache, ONNX
    Runtime's arrays) out."""

    def __init__(self, path: str | Path, threads: int | None = None, spinning: bool = True):
        self.session = ort_session(path, threads, spinning)
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in inputs if n.startswith("past.")]
        shape = inputs[self.past_names[0]].shape if self.past_names else None
        self.kv_heads, self.head_dim = int(shape[1]), int(shape[3])

    def eval(self) -> OrtCausalLM:
        return self

    def forward(self, input_ids, attention_mask=None, use_cache=False, past_key_values=None):
        """Right-padded windows (as CausalLM passes them) need no mask: causal attention keeps
        every real token from seeing the padding after it."""
        ids = np.asarray(input_ids, dtype=np.int64)
        batch, seq = ids.shape
        if past_key_values is None:
            empty = np.zeros((batch, self.kv_heads, 0, self.head_dim), dtype=np.float32)
            past_key_values = [empty] * len(self.past_names)
        past_len = past_key_values[0].shape[2] if past_key_values else 0
        feed = {"input_ids": ids, "attention_mask": np.ones((batch, past_len + seq), dtype=np.int64)}
        feed.update(zip(self.past_names, past_key_values))
        logits, *present = self.session.run(None, feed)
        return SimpleNamespace(
            logits=torch.from_numpy(logits), past_key_values=present if use_cache else None
        )

    __call__ = forward


def write_onnx_folder(
    lm: nn.Module,
    quantized: dict[str, tuple[QuantizedWeight, WeightSpec]],
    folder: Path,
    tokenizer=None,
    accuracy_level: int = 0,
) -> int:
    """The new folder ``folder``: model.onnx (``export_causal_lm``), config.json and the tokenizer,
    complete or absent. Returns the folder's bytes."""
    config = lm.config.to_dict()
    config.pop("quantization_config", None)  # a GGUF file's: the weights were read as float
    with new_folder(folder) as tmp:
        export_causal_lm(lm, tmp / "model.onnx", quantized, accuracy_level)
        write_model_files(lm, tmp, tokenizer, config)
    return folder_bytes(folder)
