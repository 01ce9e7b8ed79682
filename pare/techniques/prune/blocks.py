"""Removing whole residual blocks (layer dropping).

A block is a submodule whose output has the shape of its input and whose traced graph adds
its input back (``x + f(x)``, possibly through a ReLU or a norm afterwards). Dropping it
replaces it with the identity: the residual path carries the signal on. Which blocks to drop
is measured, not guessed: each block's removal is scored by the validation accuracy without it.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn as nn

from pare.selection import replace_module

_PASS = (nn.ReLU, nn.Identity, nn.Dropout, nn.GELU, nn.BatchNorm2d, nn.BatchNorm1d, nn.LayerNorm)


def _is_residual(module: nn.Module) -> bool:
    """True when the output is the input carried through additions (``x + f(x)``, chains of
    them, with element-wise activations or norms around): then the identity is a fair stand-in."""
    try:
        gm = fx.symbolic_trace(module)
    except Exception:
        return False
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    outputs = [n for n in gm.graph.nodes if n.op == "output"]
    if len(inputs) != 1 or len(outputs) != 1:
        return False
    x = inputs[0]

    def skip(node):
        while (
            isinstance(node, fx.Node)
            and len(node.all_input_nodes) == 1
            and (
                (node.op == "call_module" and isinstance(gm.get_submodule(node.target), _PASS))
                or (
                    node.op == "call_function"
                    and node.target in (torch.relu, nn.functional.relu, nn.functional.dropout)
                )
            )
        ):
            node = node.all_input_nodes[0]
        return node

    def carries_input(node, depth=0) -> bool:
        node = skip(node)
        if node is x:
            return True
        if depth < 8 and node.op == "call_function" and node.target in (operator.add, torch.add):
            return any(carries_input(a, depth + 1) for a in node.all_input_nodes)
        return False

    result = outputs[0].args[0]
    return isinstance(result, fx.Node) and skip(result) is not x and carries_input(result)


@torch.no_grad()
def residual_blocks(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the innermost submodules that are residual blocks keeping their input's shape."""
    shapes: dict[str, tuple] = {}
    hooks = []
    for name, m in model.named_modules():
        if name and any(True for _ in m.children()):  # containers only: leaves are single layers

            def record(mod, args, kwargs, out, name=name):
                first = next(iter([*args, *kwargs.values()]), None)  # Hugging Face passes keywords
                if isinstance(first, torch.Tensor) and isinstance(out, torch.Tensor):
                    shapes[name] = (tuple(first.shape), tuple(out.shape))

            hooks.append(m.register_forward_hook(record, with_kwargs=True))
    was_training = model.training
    model.eval()
    try:
        model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    from pare.techniques.prune.transformer import transformer_layers

    known = set(transformer_layers(model))  # residual by construction, even where fx cannot trace
    candidates = [
        n for n, (i, o) in shapes.items() if i == o and (n in known or _is_residual(model.get_submodule(n)))
    ]
    # the smallest ones: a container of several blocks is offered block by block
    return [n for n in candidates if not any(c.startswith(n + ".") for c in candidates)]


def drop(model: nn.Module, names: list[str]) -> nn.Module:
    """Replace each block by the identity; a layer in a ModuleList (iterated with extra
    arguments, as Hugging Face encoders do) is removed from the list instead."""
    listed = []
    for name in names:
        parent, _, index = name.rpartition(".")
        if isinstance(model.get_submodule(parent) if parent else model, nn.ModuleList):
            listed.append((parent, int(index)))
        else:
            replace_module(model, name, nn.Identity())
    for parent, index in sorted(listed, key=lambda p: -p[1]):  # from the end: indices stay valid
        del model.get_submodule(parent)[index]
    return model


@torch.no_grad()
def block_influence(model: nn.Module, names: list[str], batches) -> dict[str, float]:
    """Each block's mean of 1 - cos(input, output) over the tokens (or samples) of ``batches``
    (ShortGPT's block influence, Men et al. 2024): a block that barely turns the hidden state
    does least, and is the first to drop. One pass over the batches for all blocks."""
    sums = dict.fromkeys(names, 0.0)
    counts = dict.fromkeys(names, 0)

    def record(mod, args, kwargs, out, name):
        x = next(iter([*args, *kwargs.values()]))  # Hugging Face passes hidden_states by keyword at times
        y = out[0] if isinstance(out, tuple) else out
        cos = nn.functional.cosine_similarity(x.flatten(0, -2).float(), y.flatten(0, -2).float(), dim=-1)
        sums[name] += float((1 - cos).sum())
        counts[name] += cos.numel()

    hooks = [
        model.get_submodule(n).register_forward_hook(
            lambda m, a, k, o, n=n: record(m, a, k, o, n), with_kwargs=True
        )
        for n in names
    ]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            model(batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {n: sums[n] / max(counts[n], 1) for n in names}
