"""What a quantized stage ships.

- ``export_qdq``: the simulated static model as ONNX with QuantizeLinear/DequantizeLinear
  carrying pare's scales and zero points; weights are stored as int8 initializers (one byte
  each) behind a DequantizeLinear. ONNX Runtime fuses the pattern into int8 kernels.
- ``export_dynamic``: the float graph with every quantized Conv/Gemm/MatMul replaced by
  DynamicQuantizeLinear on the input, an int8 weight with pare's per-channel scales, and
  ConvInteger/MatMulInteger followed by the float rescale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn
from onnx import helper, numpy_helper

from pare.errors import UnsupportedModelError
from pare.export.onnx import quiet_export
from pare.io import atomic_write

OPSET = 17


class _Wrap(nn.Module):
    # The TorchScript exporter mistakes a GraphModule's fx graph for its own; a plain parent hides it.
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


def export_legacy(model: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    """TorchScript-based export: it writes fake-quant ops as QuantizeLinear/DequantizeLinear
    (the torch.export-based exporter has no kernel for them)."""
    import tempfile

    model = _Wrap(model).eval()
    with tempfile.TemporaryDirectory() as tmp, quiet_export(), torch.no_grad():
        path = Path(tmp) / "m.onnx"
        try:
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        except Exception as e:
            raise UnsupportedModelError(
                f"ONNX export of the quantized model failed: {type(e).__name__}: {e}"
            ) from None
        return onnx.load(str(path))


def _constants(graph) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return values


def weights_to_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace QuantizeLinear(float weight) by the int8 weight itself: the file then stores one
    byte per weight and ONNX Runtime sees the DequantizeLinear(int8 constant) it fuses."""
    graph = model.graph
    consts = _constants(graph)
    inits = {i.name: i for i in graph.initializer}
    keep = []
    for node in graph.node:
        src = node.input[0] if node.op_type == "QuantizeLinear" else None
        if src in inits and inits[src].data_type == onnx.TensorProto.FLOAT:
            w = consts[src]
            scale, zero = consts[node.input[1]], consts[node.input[2]]
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * w.ndim
            if scale.ndim == 1 and scale.size > 1:
                shape[axis] = -1
            q = np.clip(np.rint(w / scale.reshape(shape)) + zero.reshape(shape).astype(np.float32), -128, 127)
            graph.initializer.append(numpy_helper.from_array(q.astype(np.int8), node.output[0]))
            continue
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input}
    for init in list(graph.initializer):
        if init.name not in used and init.name not in {o.name for o in graph.output}:
            graph.initializer.remove(init)
    return model


def shorten_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rename internal tensors and nodes to short ids: the exporter's path-like names can take
    more bytes than a small model's int8 weights."""
    graph = model.graph
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for init in graph.initializer:
        init.name = short(init.name)
    for i, node in enumerate(graph.node):
        node.name = f"n{i}"
        node.doc_string = ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    del graph.value_info[:]
    model.doc_string = ""
    return model


def export_qdq(sim: nn.Module, example: torch.Tensor, path: Path) -> int:
    model = shorten_names(weights_to_int8(export_legacy(sim, example)))
    atomic_write(path, lambda tmp: onnx.save(model, tmp))
    return Path(path).stat().st_size


def embedding_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric int8 rows: (codes, scale per row, dequantized). Idempotent: rounding the
    dequantized table again gives the same codes and scales."""
    scale = w.detach().abs().amax(1).clamp(min=1e-12) / 127
    codes = torch.round(w.detach() / scale[:, None]).clamp(-127, 127)
    return codes.to(torch.int8), scale, codes * scale[:, None]


def export_dynamic(
    float_model: nn.Module, example: torch.Tensor, weights: dict[str, dict], path: Path, embeddings=()
) -> int:
    """``weights``: parameter name of each quantized weight -> {"codes" int8 (out, ...), "scale" (out,)};
    ``embeddings``: parameter names of tables (already rounded to int8 rows) whose Gather reads int8."""
    model = export_legacy(float_model, example)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consts = _constants(graph)
    # Linear over a sequence is exported as MatMul with a transposed copy of the weight under
    # a new name: find those by value.
    params = dict(float_model.named_parameters())
    transposed_of = {_fingerprint(params[k].detach().numpy().T): k for k in weights if params[k].dim() == 2}
    tables = {_fingerprint(params[k].detach().numpy()): k for k in embeddings}
    nodes, counter = [], 0  # numbering of the rewritten nodes' tensors
    for node in graph.node:
        if node.op_type == "Gather" and node.input[0] in inits:
            key = _param_key(node.input[0], dict.fromkeys(embeddings)) or tables.get(
                _fingerprint(consts[node.input[0]])
            )
            if key is not None:
                nodes += _int8_gather(graph, node, params[key], f"pare_emb{counter}_")
                counter += 1
                continue
        w_name = node.input[1] if len(node.input) > 1 else None
        key = _param_key(w_name, weights)
        if key is None and node.op_type == "MatMul" and w_name in inits:
            key = transposed_of.get(_fingerprint(consts[w_name]))
        if node.op_type not in ("Conv", "Gemm", "MatMul") or key is None or w_name not in inits:
            nodes.append(node)
            continue
        nodes += _integer_op(graph, node, weights[key], consts, f"pare_dq{counter}_")
        counter += 1
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    for init in list(graph.initializer):
        if init.name not in used:
            graph.initializer.remove(init)
    model = shorten_names(model)
    atomic_write(path, lambda tmp: onnx.save(model, tmp))
    return Path(path).stat().st_size


def _int8_gather(graph, node, table: torch.Tensor, p: str) -> list:
    """A Gather of float rows as a Gather of int8 rows and one of their scales, multiplied."""
    codes, scale, _ = embedding_int8(table)
    graph.initializer.append(numpy_helper.from_array(codes.numpy(), p + "w"))
    graph.initializer.append(numpy_helper.from_array(scale.numpy()[:, None].astype(np.float32), p + "s"))
    return [
        helper.make_node("Gather", [p + "w", node.input[1]], [p + "q"], axis=0),
        helper.make_node("Gather", [p + "s", node.input[1]], [p + "qs"], axis=0),
        helper.make_node("Cast", [p + "q"], [p + "qf"], to=onnx.TensorProto.FLOAT),
        helper.make_node("Mul", [p + "qf", p + "qs"], [node.output[0]]),
    ]


def _integer_op(graph, node, q: dict, consts: dict, p: str) -> list:
    """Conv/Gemm/MatMul as DynamicQuantizeLinear + ConvInteger/MatMulInteger on pare's int8
    codes, rescaled by input scale x per-channel weight scale, plus the float bias."""
    codes, scale = np.asarray(q["codes"], dtype=np.int8), np.asarray(q["scale"], dtype=np.float32)
    nodes = [helper.make_node("DynamicQuantizeLinear", [node.input[0]], [p + "xq", p + "xs", p + "xz"])]
    integer_inputs = [p + "xq", p + "w", p + "xz", p + "wz"]
    if node.op_type == "Conv":
        graph.initializer.append(numpy_helper.from_array(codes, p + "w"))
        graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.int8), p + "wz"))
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        nodes.append(helper.make_node("ConvInteger", integer_inputs, [p + "acc"], **attrs))
        rescale_shape = (1, -1, 1, 1)
    else:
        b = codes.T  # MatMulInteger takes B as (in, out); the codes are the Linear's (out, in) weight
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(b), p + "w"))
        graph.initializer.append(numpy_helper.from_array(np.zeros(b.shape[1], np.int8), p + "wz"))
        nodes.append(helper.make_node("MatMulInteger", integer_inputs, [p + "acc"]))
        rescale_shape = (-1,)
    graph.initializer.append(numpy_helper.from_array(scale.reshape(rescale_shape), p + "ws"))
    nodes.append(helper.make_node("Cast", [p + "acc"], [p + "accf"], to=onnx.TensorProto.FLOAT))
    nodes.append(helper.make_node("Mul", [p + "xs", p + "ws"], [p + "s"]))
    out, bias = node.output[0], node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is None:
        nodes.append(helper.make_node("Mul", [p + "accf", p + "s"], [out]))
        return nodes
    nodes.append(helper.make_node("Mul", [p + "accf", p + "s"], [p + "scaled"]))
    if node.op_type == "Conv":
        b_arr = consts[bias].reshape(1, -1, 1, 1)
        graph.initializer.append(numpy_helper.from_array(b_arr.astype(np.float32), p + "b"))
        bias = p + "b"
    nodes.append(helper.make_node("Add", [p + "scaled", bias], [out]))
    return nodes


def _fingerprint(array: np.ndarray) -> tuple:
    a = np.ascontiguousarray(array, dtype=np.float32)
    return a.shape, hash(a.tobytes())


def _param_key(onnx_name: str | None, weights: dict) -> str | None:
    """The exporter prefixes parameter names with the wrapper's attribute (``inner.``)."""
    if onnx_name is None:
        return None
    for candidate in (onnx_name, onnx_name.removeprefix("inner.")):
        if candidate in weights:
            return candidate
    return None
