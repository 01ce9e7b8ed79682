"""Static quantization needs to know where activations flow, so it works on the traced graph.

``prepare_static`` traces the model with torch.fx, folds BatchNorm into the preceding
convolution, wraps the chosen Conv2d/Linear layers, and puts an activation quantizer on the
model input and on the output of every computing node (convolution, linear, addition,
concatenation, pooling to a vector). When a computing node feeds only a ReLU, the quantizer goes
after the ReLU (or ReLU6) instead; once calibrated, that range starts at 0 (and ends at or below
6), so the quantizer's clamps are the ReLU's and the ReLU is removed (``finalize``). The model's output stays float. This is the layout ONNX Runtime fuses into int8
kernels (QLinearConv, QLinearAdd, ...); pass-through ops (pooling, flatten) need no quantizer.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.experimental.optimization import fuse

from pare.errors import UnsupportedModelError
from pare.selection import replace_module
from pare.techniques.quantize.layers import ActQuant, QuantLayer
from pare.techniques.quantize.observers import Observer

_COMPUTE_FUNCTIONS = {operator.add, torch.add, torch.cat, torch.mean, F.adaptive_avg_pool2d}
_RELU_FUNCTIONS = {F.relu: float("inf"), torch.relu: float("inf"), F.relu6: 6.0}  # -> upper clamp
_RELU_MODULES = {nn.ReLU: float("inf"), nn.ReLU6: 6.0}


def trace(model: nn.Module, what: str) -> fx.GraphModule:
    model = model.eval()
    try:
        return fuse(model)  # symbolic trace + Conv/BatchNorm folding
    except Exception as e:
        raise UnsupportedModelError(
            f"{what} needs a model that torch.fx can trace ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            f"use mode: weight_only or dynamic for this model"
        ) from None


def _relu_top(gm: fx.GraphModule, node: fx.Node) -> float | None:
    """The upper clamp of a ReLU (inf) or ReLU6 (6) node; None for any other node."""
    if node.op == "call_module":
        return _RELU_MODULES.get(type(gm.get_submodule(node.target)))
    return _RELU_FUNCTIONS.get(node.target) if node.op == "call_function" else None


def _is_relu(gm: fx.GraphModule, node: fx.Node) -> bool:
    return _relu_top(gm, node) is not None


def _is_compute(gm: fx.GraphModule, node: fx.Node) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), QuantLayer | nn.AdaptiveAvgPool2d)
    return node.op == "call_function" and node.target in _COMPUTE_FUNCTIONS


def prepare_static(model: nn.Module, specs: dict, make_observer) -> fx.GraphModule:
    """``specs``: layer name -> WeightSpec for the layers to quantize. ``make_observer()`` gives a
    fresh Observer. The result calibrates when run (observers collect) until ``finalize``."""
    gm = trace(model, "static quantization")
    for name, spec in specs.items():
        replace_module(gm, name, QuantLayer(gm.get_submodule(name), spec))
    graph = gm.graph
    count = 0
    for node in list(graph.nodes):
        if node.op == "placeholder":
            point = node
        elif _is_compute(gm, node):
            users = list(node.users)
            point = None if len(users) == 1 and _is_relu(gm, users[0]) else node  # else: after the ReLU
        elif _is_relu(gm, node) and _is_relu_after_compute(gm, node):
            point = node
        else:
            point = None
        if point is None or any(u.op == "output" for u in point.users):
            continue  # the model's output (the logits) stays in float: clipping it would tie the top classes
        name = f"act_quant_{count}"
        count += 1
        gm.add_submodule(name, ActQuant(make_observer()))
        with graph.inserting_after(point):
            q = graph.call_module(name, (point,))
        point.replace_all_uses_with(q, delete_user_cb=lambda user, q=q: user is not q)
    gm.recompile()
    return gm


def _is_relu_after_compute(gm, node) -> bool:
    arg = node.args[0] if node.args else None
    return isinstance(arg, fx.Node) and _is_compute(gm, arg)


def finalize(gm: fx.GraphModule) -> fx.GraphModule:
    """Freeze every activation range; drop ReLUs made redundant by a quantizer starting at 0."""
    for m in gm.modules():
        if isinstance(m, ActQuant) and m.calibrating:
            m.freeze()
    return remove_redundant_relus(gm)


def remove_redundant_relus(gm: fx.GraphModule) -> fx.GraphModule:
    for node in list(gm.graph.nodes):
        if not (_is_relu(gm, node) and len(node.users) == 1):
            continue
        user = next(iter(node.users))
        quant = gm.get_submodule(user.target) if user.op == "call_module" else None
        if not isinstance(quant, ActQuant) or quant.zero_point != 0:
            continue
        top = quant.scale * (2**quant.bits - 1)  # the largest value the quantizer passes
        if top <= _relu_top(gm, node) * (1 + 1e-6):  # its clamps at 0 (and at top) are the ReLU's
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return gm


def act_quants(gm: nn.Module) -> list[ActQuant]:
    return [m for m in gm.modules() if isinstance(m, ActQuant)]


def observer_factory(method: str, percentile: float, momentum: float):
    return lambda: Observer(method, percentile=percentile, momentum=momentum)
