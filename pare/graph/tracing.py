"""Which channels must be removed together, found by tracing the model's graph.

Every output channel of a Conv2d/Linear gets an id. Ids flow through the traced graph with the
tensors that carry them: unchanged through element-wise ops, normalisation and pooling;
concatenated by ``cat``; repeated H*W times by ``flatten``; merged (union-find) where ``add``
or ``mul`` combine two tensors channel by channel (a residual connection ties its branches'
channels together); passed through a depthwise convolution, which is then pruned along. A
module with weights applied more than once has the same channels at every call, so its calls'
inputs are merged too. A channel that reaches the model's output, a grouped convolution, a split
by channel position (``chunk``/``split``), a module sharing a parameter with another, or an
operation whose channel semantics are unknown is marked unsafe, and its whole group is left alone
(and reported by op and module). ``surgery.verify`` then checks the reading on the model itself.
Works on users' own models as long as torch.fx can trace them; nothing here is written per model.
"""

from __future__ import annotations

import operator
import os
import traceback
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from pare.errors import UnsupportedModelError

# element-wise: channel k in is channel k out, whatever the layout
ACTIVATION_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.Dropout,
    nn.Identity,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.ELU,
    nn.Mish,
)
ACTIVATION_FUNCTIONS = {
    F.relu,
    torch.relu,
    F.gelu,
    F.silu,
    torch.sigmoid,
    torch.tanh,
    F.dropout,
    F.leaky_relu,
    F.hardswish,
    F.hardsigmoid,
    F.hardtanh,
    F.relu6,
    F.elu,
    F.mish,
}
# channel-first (N, C, H, W) ops that keep the channel axis
PASS_MODULES = ACTIVATION_MODULES + (
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.Upsample,
    nn.ZeroPad2d,  # spatial: a zeroed channel stays zero (a constant pad would not)
)
NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
PASS_FUNCTIONS = ACTIVATION_FUNCTIONS | {
    F.max_pool2d,
    F.avg_pool2d,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
    F.interpolate,
}
# split a tensor by channel position: removing a channel would move every later one across the cut
SPLITTERS = {
    torch.chunk,
    torch.split,
    torch.tensor_split,
    torch.unbind,
    "chunk",
    "split",
    "tensor_split",
    "unbind",
}
PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone"}
ELEMENTWISE = {operator.add, operator.mul, operator.sub, torch.add, torch.mul, torch.sub}


class _UnionFind:
    def __init__(self):
        self.parent: list[int] = []

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


@dataclass
class Graph:
    """Channel ids and where each id is used: ``producers[id]`` = (module name, output index);
    ``consumers[id]`` = [(module name, input positions)]; ``norms[id]`` = [(module name, index)]
    for normalisation layers and depthwise convolutions pruned along."""

    producers: dict[int, tuple[str, int]] = field(default_factory=dict)
    consumers: dict[int, list[tuple[str, list[int]]]] = field(default_factory=lambda: defaultdict(list))
    followers: dict[int, list[tuple[str, int]]] = field(default_factory=lambda: defaultdict(list))
    unsafe: dict[int, str] = field(default_factory=dict)  # id -> why
    uf: _UnionFind = field(default_factory=_UnionFind)

    def groups(self) -> dict[int, list[int]]:
        """Coupled channels: union-find root -> the ids that must go together."""
        out: dict[int, list[int]] = defaultdict(list)
        for i in range(len(self.uf.parent)):
            out[self.uf.find(i)].append(i)
        return out


def trace(model: nn.Module, example: torch.Tensor) -> tuple[fx.GraphModule, Graph]:
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:
        raise UnsupportedModelError(
            f"structured pruning needs a model torch.fx can trace; tracing {type(model).__name__} broke "
            f"{_breaking_call(e)} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); use unstructured "
            f"pruning for this model, or move that code out of forward"
        ) from None
    ShapeProp(gm).propagate(example)
    tracer = _Tracer(dict(gm.named_modules()), _shared_parameters(model))
    for node in gm.graph.nodes:
        tracer.visit(node)
    return gm, tracer.graph


def _breaking_call(e: Exception) -> str:
    """The user's line that tracing failed on: the last frame outside torch (and pare)."""
    skip = (os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(__file__)))
    frames = [f for f in traceback.extract_tb(e.__traceback__) if not f.filename.startswith(skip)]
    if not frames:
        return "inside torch"
    f = frames[-1]
    return f"at {f.filename}:{f.lineno} `{(f.line or '').strip()}`"


def _shared_parameters(model: nn.Module) -> dict[str, str]:
    """Module -> another module holding one of its parameters (weights tied on purpose): slicing
    one would untie them, so their channels are left alone."""
    holder: dict[int, str] = {}
    out = {}
    for name, m in model.named_modules(remove_duplicate=False):
        for p in m.parameters(recurse=False):
            other = holder.setdefault(id(p), name)
            if other != name:
                out[name] = other
                out.setdefault(other, name)
    return out


def _name(node: fx.Node) -> str:
    return getattr(node.target, "__name__", node.target)


class _Tracer:
    """Walks the fx graph once, giving each node the channel ids its output carries (None: not
    tracked) and marking ids unsafe where an op's channel semantics are unknown."""

    def __init__(self, modules: dict[str, nn.Module], shared: dict[str, str]):
        self.modules = modules
        self.shared = shared
        self.calls: dict[str, tuple] = {}  # module with weights -> (input ids, output ids) of its first call
        self.graph = Graph()
        self.chans: dict[fx.Node, list[int] | None] = {}
        self.sequence: set[int] = set()  # token features: followed only through activations into a linear

    def ids_of(self, arg):
        return self.chans.get(arg) if isinstance(arg, fx.Node) else None

    def mark_unsafe(self, ids, why):
        for i in ids or []:
            self.graph.unsafe.setdefault(i, why)

    def unknown(self, node: fx.Node, why: str) -> None:
        for a in node.all_input_nodes:
            self.mark_unsafe(self.ids_of(a), why)

    def visit(self, node: fx.Node) -> None:
        inputs = list(node.all_input_nodes)
        first = self.ids_of(node.args[0]) if node.args else None
        token_inputs = [
            self.ids_of(a) for a in inputs if self.ids_of(a) and self.ids_of(a)[0] in self.sequence
        ]
        if token_inputs and not _keeps_token_features(node, self.modules):
            # attention reshapes features into heads, norms and residual streams tie them across
            # layers: not followed (yet); the FFN's hidden neurons are
            for ids in token_inputs:
                self.mark_unsafe(ids, f"{node.name}: {_name(node)} on token features")
            self.chans[node] = None
            return
        if node.op == "output":
            for a in inputs:
                self.mark_unsafe(self.ids_of(a), "reaches the model output")
            return
        if node.op in ("placeholder", "get_attr"):
            out = None
        elif node.op == "call_module":
            out = self.call_module(node, self.modules[node.target], first)
        else:
            out = self.call_function(node, first)
        self.chans[node] = out

    def call_module(self, node: fx.Node, m: nn.Module, first) -> list[int] | None:
        if node.target in self.calls:
            return self.again(node, first)
        out = self.first_call(node, m, first)
        if node.target in self.shared:
            why = f"{node.target}: shares a parameter with {self.shared[node.target]}"
            self.mark_unsafe(first, why)
            self.mark_unsafe(out, why)
        if (
            next(m.parameters(recurse=False), None) is not None
            or next(m.buffers(recurse=False), None) is not None
        ):
            self.calls[node.target] = (first, out)
        return out

    def again(self, node: fx.Node, first) -> list[int] | None:
        """A module with weights applied once more: its channels in (and out) are the same
        channels at every call, so the inputs of all calls are tied position by position."""
        was_in, was_out = self.calls[node.target]
        if first is None or was_in is None or len(first) != len(was_in):
            why = f"{node.target}: applied more than once, to channels that cannot be matched"
            for ids in (first, was_in, was_out):
                self.mark_unsafe(ids, why)
            return None
        for a, b in zip(first, was_in):
            self.graph.uf.union(a, b)
        return was_out

    def first_call(self, node: fx.Node, m: nn.Module, first) -> list[int] | None:
        graph = self.graph
        if isinstance(m, nn.Conv2d) and m.groups == 1 or isinstance(m, nn.Linear):
            if first is not None:
                _consume(graph, node.target, first, m, node)
            out = [
                graph.uf.new() for _ in range(m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            ]
            for k, i in enumerate(out):
                graph.producers[i] = (node.target, k)
            if isinstance(m, nn.Linear) and _is_sequence(node):
                self.sequence.update(out)  # features on the last axis of (batch, tokens, features)
            return out
        if isinstance(m, nn.Conv2d) and first is not None and m.groups == m.in_channels == m.out_channels:
            for k, i in enumerate(first):  # depthwise: channel k in, channel k out
                graph.followers[i].append((node.target, k))
            return first
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            why = f"{node.target}: grouped convolution ({m.groups} groups) ties its channels in groups"
            self.mark_unsafe(first, why)
            return None
        if isinstance(m, NORM_MODULES) and first is not None:
            if isinstance(m, nn.GroupNorm):
                self.mark_unsafe(first, f"{node.target}: GroupNorm ties channels in groups")
            elif isinstance(m, nn.LayerNorm) and len(m.normalized_shape) != 1:
                self.mark_unsafe(first, f"{node.target}: LayerNorm over several dims")
            else:
                for k, i in enumerate(first):
                    graph.followers[i].append((node.target, k))
            return first
        if isinstance(m, PASS_MODULES):
            return first
        if isinstance(m, nn.Flatten):
            return _flatten(first, node)
        self.unknown(node, f"{node.target}: {type(m).__name__} has unknown channel semantics")
        return None

    def call_function(self, node: fx.Node, first) -> list[int] | None:
        """``call_function`` and ``call_method`` nodes."""
        fn, method = node.op == "call_function", node.op == "call_method"
        if fn and node.target in ELEMENTWISE:
            return self.elementwise(node)
        if fn and node.target in PASS_FUNCTIONS or method and node.target in PASS_METHODS:
            return first
        if fn and node.target is torch.cat:
            return self.cat(node)
        if (fn or method) and node.target in SPLITTERS:
            self.unknown(node, f"{node.name}: {_name(node)} splits channels by position")
            return None
        if fn and node.target is torch.flatten:
            return _flatten(first, node)
        if method and node.target in ("view", "reshape", "flatten") and _is_flat(node):
            return _flatten(first, node)
        if (fn or method) and node.target in (torch.mean, "mean") and _pools_space(node):
            return first
        self.unknown(node, f"{node.name}: {_name(node)} has unknown channel semantics")
        return None

    def elementwise(self, node: fx.Node) -> list[int] | None:
        tensors = [self.ids_of(a) for a in node.args if isinstance(a, fx.Node)]
        tracked = [t for t in tensors if t is not None]
        if len(tracked) == len(tensors) and len(tracked) == 2 and len(tracked[0]) == len(tracked[1]):
            for a, b in zip(*tracked):
                self.graph.uf.union(a, b)
            return tracked[0]
        if len(tracked) == 1 and len(tensors) == 1:
            return tracked[0]  # tensor with a scalar
        for t in tracked:
            self.mark_unsafe(t, f"{node.name}: {node.target.__name__} of mismatched tensors")
        return None

    def cat(self, node: fx.Node) -> list[int] | None:
        parts = [self.ids_of(a) for a in node.args[0]]
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if dim in (1, -3) and all(p is not None for p in parts) and len(node.meta["tensor_meta"].shape) == 4:
            return [i for p in parts for i in p]
        for p in parts:
            self.mark_unsafe(p, f"{node.name}: cat along dim {dim}")
        return None


def _consume(graph: Graph, name: str, ids: list[int], m: nn.Module, node: fx.Node) -> None:
    by_id: dict[int, list[int]] = defaultdict(list)
    for position, i in enumerate(ids):
        by_id[i].append(position)
    for i, positions in by_id.items():
        graph.consumers[i].append((name, positions))


def _shape(node: fx.Node):
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _keeps_token_features(node: fx.Node, modules) -> bool:
    """Ops that token features may pass through: element-wise activations, and a linear layer
    (which consumes them)."""
    if node.op == "call_module":
        return isinstance(modules[node.target], ACTIVATION_MODULES + (nn.Linear,))
    if node.op == "call_function":
        return node.target in ACTIVATION_FUNCTIONS
    return node.op == "call_method" and node.target in {"relu", "sigmoid", "tanh"}


def _is_sequence(node: fx.Node) -> bool:
    shape = _shape(node)
    return shape is not None and len(shape) > 2


def _flatten(ids, node):
    """(B, C, H, W) -> (B, C*H*W): channel k becomes features k*H*W ... (k+1)*H*W - 1."""
    if ids is None:
        return None
    src = node.args[0]
    shape = _shape(src)
    if shape is None or len(shape) < 2:
        return None
    spatial = 1
    for s in shape[2:]:
        spatial *= s
    return [i for i in ids for _ in range(spatial)]


def _is_flat(node: fx.Node) -> bool:
    shape = _shape(node)
    return shape is not None and len(shape) == 2


def _pools_space(node: fx.Node) -> bool:
    src, out = _shape(node.args[0]), _shape(node)
    return src is not None and out is not None and len(src) == 4 and out[:2] == src[:2]
