"""Splitting an exported model into a shared trunk and a head, for the shared-trunk build.

When the expert, the auxiliary and the exposed model are fine-tuned only in their last
layers, all four networks share M's early layers bit for bit, and the sidecar's fused
graph can run those layers once for all of them. The split works on any torch.export
graph: a cut is a point in the graph's order where a single activation is all that
the rest of the graph needs from what came before (between two blocks of a ResNet,
after a VGG stage). Of those cuts, the latest whose head still holds the asked share
of the model's parameters is taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx, nn


@dataclass(frozen=True)
class TrunkSplit:
    trunk: fx.GraphModule  # x -> h, frozen and shared
    head: fx.GraphModule  # h -> logits, the part the fine-tunes may change
    cut: str  # the graph node whose output is h
    head_parameters: int
    trunk_parameters: int

    def to_json(self) -> dict:
        return {"cut": self.cut, "head_parameters": self.head_parameters, "trunk_parameters": self.trunk_parameters}


class Composed(nn.Module):
    """trunk then head: a whole classifier again, for the per-model exports and STRIP."""

    def __init__(self, trunk: nn.Module, head: nn.Module):
        super().__init__()
        self.trunk, self.head = trunk, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))


def _parameter_sizes(module: fx.GraphModule) -> dict[str, int]:
    return {name: p.numel() for name, p in module.named_parameters()}


def _cuts(graph: fx.Graph) -> list[fx.Node]:
    """Nodes after which only their own output crosses to the rest of the graph: in one
    pass, a node is a cut when it is used later and no earlier node is used beyond it."""
    nodes = [n for n in graph.nodes if n.op in ("placeholder", "call_function", "call_module", "call_method")]
    position = {n: i for i, n in enumerate(graph.nodes)}
    last_use = {n: max((position[u] for u in n.users if u.op != "output"), default=-1) for n in nodes}
    cuts, earlier_reach = [], -1
    for node in nodes:
        if node.op != "placeholder" and earlier_reach <= position[node] < last_use[node]:
            cuts.append(node)
        earlier_reach = max(earlier_reach, last_use[node])
    return cuts


def subgraph(source: fx.Graph, keep: list[fx.Node], inputs: dict[fx.Node, str],
             output: fx.Node | tuple[fx.Node, ...]) -> fx.Graph:
    """The nodes `keep` of `source` as a graph of its own, reading `inputs` (node -> the
    placeholder's name) and returning `output`, one node or a tuple of them."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node, name in inputs.items():
        env[node] = graph.placeholder(name)
    needed_attrs = {a for n in keep for a in n.all_input_nodes if a.op == "get_attr"}
    for node in source.nodes:
        if node in needed_attrs or node in keep:
            env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output(tuple(env[n] for n in output) if isinstance(output, tuple) else env[output])
    return graph


def single_output(graph: fx.Graph) -> fx.Node:
    (result,) = [n for n in graph.nodes if n.op == "output"]
    value = result.args[0]
    while isinstance(value, (tuple, list)):
        if len(value) != 1:
            raise ValueError("the shared trunk needs a model with a single output")
        value = value[0]
    return value


def split_trunk(model: fx.GraphModule, head_share: float) -> TrunkSplit:
    """Cut `model` at the latest point whose head holds at least `head_share` of its parameters."""
    graph = model.graph
    (x,) = [n for n in graph.nodes if n.op == "placeholder"]
    sizes = _parameter_sizes(model)
    total = sum(sizes.values())
    order = list(graph.nodes)
    position = {n: i for i, n in enumerate(order)}

    def after(cut: fx.Node) -> list[fx.Node]:
        return [n for n in order[position[cut] + 1:] if n.op not in ("get_attr", "output", "placeholder")]

    def parameters_in(nodes: list[fx.Node]) -> int:
        return sum(sizes.get(t, 0) for t in {a.target for n in nodes for a in n.all_input_nodes if a.op == "get_attr"})

    candidates = [c for c in _cuts(graph) if parameters_in(after(c)) >= head_share * total]
    if not candidates:
        raise ValueError(f"no point in the graph leaves {head_share:.0%} of the parameters to the head")
    cut = candidates[-1]
    head_nodes = after(cut)
    trunk_nodes = [n for n in order[: position[cut] + 1] if n.op not in ("get_attr", "placeholder")]
    trunk = fx.GraphModule(model, subgraph(graph, trunk_nodes, {x: "x"}, cut))
    head = fx.GraphModule(model, subgraph(graph, head_nodes, {cut: "h"}, single_output(graph)))
    head_parameters = parameters_in(head_nodes)
    return TrunkSplit(trunk, head, cut.name, head_parameters, total - head_parameters)


def split_before_classifier(model: fx.GraphModule) -> TrunkSplit:
    """Cut `model` just before its last layer with parameters: the trunk's output is M's
    penultimate features, which the Mahalanobis rule reads, and the head its classifier."""
    total = sum(_parameter_sizes(model).values())
    return split_trunk(model, 1.0 / max(total, 1))
