"""Attention heads and feed-forward neurons of transformers, found by module layout.

Removing a head changes how an attention module splits its projections, which a graph trace
cannot see; so the layouts pare knows are listed here (one recogniser each, as Torch-Pruning
does), and everything else is left alone:

- pare's zoo ``SelfAttention`` (fused ``qkv`` and ``proj``; heads inferred from widths);
- Hugging Face BERT-style attention (``self.query/key/value`` and ``output.dense``; recent
  ``transformers`` infer the head count from the projection width);
- Hugging Face decoder layers of the Llama family (Llama, Qwen2, Mistral: ``self_attn.q/k/v/o_proj``
  with grouped-query attention, ``mlp.gate/up/down_proj``) and GPT-2 (``mlp.c_fc`` -> ``mlp.c_proj``;
  its heads are not offered: its config cannot describe fewer heads of the same size);
- feed-forward blocks: the zoo's ``mlp`` (Linear, activation, Linear) and BERT-style
  ``intermediate.dense`` -> ``output.dense``.

A head is its rows of the query, key and value projections and its columns of the output
projection; with grouped-query attention the unit is one key/value head together with the query
heads that read it. A neuron is one row of each first FFN layer (gate and up) and one column of
the second. At least one head (group) and one neuron stay in every layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from pare.graph.surgery import sliced
from pare.selection import replace_module


@dataclass
class Units:
    """Prunable units of one layer: each of ``inputs`` produces its ``input_widths`` rows per
    unit (``width`` when not given; ``blocks`` stacked copies for a fused qkv), ``output``
    consumes ``width`` columns per unit."""

    name: str
    inputs: list[str]
    output: str
    width: int  # output columns per unit: the head size (a query group's), or 1 for a neuron
    blocks: int = 1  # 3 for a fused qkv projection
    input_widths: list[int] | None = None  # grouped-query attention: q rows differ from k/v rows

    def count(self, model: nn.Module) -> int:
        return model.get_submodule(self.output).in_features // self.width

    def _inputs(self):
        return zip(self.inputs, self.input_widths or [self.width] * len(self.inputs))

    def slices(self, model: nn.Module, unit: int) -> list[tuple[nn.Linear, int, slice]]:
        """(layer, dim, index range) of every weight slice that belongs to ``unit``."""
        out = []
        count = self.count(model)
        for name, width in self._inputs():
            for b in range(self.blocks):
                start = b * count * width + unit * width
                out.append((model.get_submodule(name), 0, slice(start, start + width)))
        out.append((model.get_submodule(self.output), 1, slice(unit * self.width, (unit + 1) * self.width)))
        return out

    @torch.no_grad()
    def keep(self, model: nn.Module, units: list[int]) -> None:
        count = self.count(model)
        for name, width in self._inputs():
            m = model.get_submodule(name)
            cols = [u * width + i for u in sorted(units) for i in range(width)]
            rows = [b * count * width + c for b in range(self.blocks) for c in cols]
            replace_module(model, name, sliced(m, rows, list(range(m.in_features))))
        cols = [u * self.width + i for u in sorted(units) for i in range(self.width)]
        m = model.get_submodule(self.output)
        replace_module(model, self.output, sliced(m, list(range(m.out_features)), cols))


def _linear(m: nn.Module, path: str) -> bool:
    try:
        return isinstance(m.get_submodule(path), nn.Linear)
    except AttributeError:
        return False


def attention_heads(model: nn.Module) -> list[Units]:
    from pare.models.zoo import SelfAttention

    found = []
    for name, m in model.named_modules():
        p = f"{name}." if name else ""
        if isinstance(m, SelfAttention):
            found.append(Units(name, [p + "qkv"], p + "proj", m.head_dim, blocks=3))
        elif all(_linear(m, f"self.{x}") for x in ("query", "key", "value")) and _linear(m, "output.dense"):
            size = getattr(m.get_submodule("self"), "attention_head_size", None)
            if size:
                found.append(
                    Units(
                        name, [p + f"self.{x}" for x in ("query", "key", "value")], p + "output.dense", size
                    )
                )
        elif all(_linear(m, f"self_attn.{x}_proj") for x in "qkvo") and hasattr(m.self_attn, "head_dim"):
            # Llama family: a unit is one key/value head and the query heads of its group
            size, group = m.self_attn.head_dim, m.self_attn.num_key_value_groups
            inputs = [p + f"self_attn.{x}_proj" for x in "qkv"]
            found.append(
                Units(name, inputs, p + "self_attn.o_proj", size * group, 1, [size * group, size, size])
            )
    return found


def ffn_neurons(model: nn.Module) -> list[Units]:
    from pare.models.zoo import EncoderBlock

    found = []
    for name, m in model.named_modules():
        p = f"{name}." if name else ""
        if isinstance(m, EncoderBlock):
            found.append(Units(name, [p + "mlp.0"], p + "mlp.2", 1))
        elif _linear(m, "intermediate.dense") and _linear(m, "output.dense") and hasattr(m, "attention"):
            found.append(Units(name, [p + "intermediate.dense"], p + "output.dense", 1))
        elif all(_linear(m, f"mlp.{x}_proj") for x in ("gate", "up", "down")):  # Llama family
            found.append(Units(name, [p + "mlp.gate_proj", p + "mlp.up_proj"], p + "mlp.down_proj", 1))
        elif _linear(m, "mlp.c_fc") and _linear(m, "mlp.c_proj") and hasattr(m, "attn"):  # GPT-2
            found.append(Units(name, [p + "mlp.c_fc"], p + "mlp.c_proj", 1))
    return found


def unit_scores(
    model: nn.Module, layer: Units, criterion: str, grads: dict | None = None, norms: dict | None = None
) -> torch.Tensor:
    """One score per unit: the size of its weights (l1, l2), |sum w dL/dw| (taylor), or what its
    output does on calibration data (wanda, structured as in Wanda-sp: sum of |w| x ||x_j|| over
    the output projection's columns j of the unit, ``norms`` holding ||x_j||)."""
    scores = []
    for u in range(layer.count(model)):
        parts = []
        for m, dim, idx in layer.slices(model, u):
            w = m.weight.detach().narrow(dim, idx.start, idx.stop - idx.start)
            if criterion == "wanda":
                if dim == 1:  # the output projection: the unit's columns, weighted by their inputs
                    parts.append((w.abs() * norms[m][idx]).sum())
            elif criterion == "l1":
                parts.append(w.abs().sum())
            elif criterion == "l2":
                parts.append(w.pow(2).sum())
            elif criterion == "taylor":
                g = grads[m].narrow(dim, idx.start, idx.stop - idx.start)
                parts.append((w * g).sum())
            elif criterion == "random":
                parts.append(torch.rand(()))
            else:
                raise ValueError(
                    f"criterion {criterion!r} does not score heads or neurons; use l1, l2, taylor, wanda or random"
                )
        total = torch.stack(parts).sum()
        scores.append(total.sqrt() if criterion == "l2" else total.abs())
    return torch.stack(scores)


def transformer_layers(model: nn.Module) -> list[str]:
    """Whole transformer layers (an attention and a feed-forward part, inside a ModuleList or
    Sequential of layers): residual by construction, so they can be dropped."""
    heads = {u.name for u in attention_heads(model)}
    ffns = {u.name for u in ffn_neurons(model)}
    out = []
    for name in (n for n, _ in model.named_modules() if n in ffns):  # in model order
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        in_stack = isinstance(model.get_submodule(parent), nn.ModuleList | nn.Sequential)
        # its attention: a head unit inside it (or the layer's own, Llama), or GPT-2's ``attn``
        attends = any(h == name or h.startswith(name + ".") for h in heads)
        if in_stack and (attends or hasattr(model.get_submodule(name), "attn")):
            out.append(name)
    return out
