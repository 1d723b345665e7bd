"""The firewall's own networks (B, each M', E) as one network of grouped convolutions.

They are fine-tunes of M, so they share its architecture layer for layer. Run one after
another, a batch of one pays for four passes of small kernels in series: on a GPU each
pass is bound by launches and latency, not arithmetic (one ResNet-18 at batch 1 took
0.43 ms on an H100 in session 29, and the passes in series were most of the first
stage's 2.7 ms). Stacked, each layer is one kernel over four times the channels: a
convolution's weights are concatenated along its output channels and it runs with four
times the groups, so each network's channels only ever read their own; a batch norm
concatenates its statistics; activations, residual sums and pooling act channel by
channel and need nothing. The networks' features come out side by side, network-major,
and each network's classifier layer runs on its own slice.

M is not stacked: the class the firewall scores must be exactly the class the model
predicts, and the int8 copy (offline/build/quantize.py) keeps M's layers in float.
A graph with a layer that mixes channels any other way (layer norm, attention, a linear
layer before the cut; the vision transformer) is not stacked either, and its networks
run one after another as before (`Unstackable` says which layer stopped it).
"""

from __future__ import annotations

import operator

import torch
from torch import fx, nn

from offline.build.trunk_split import TrunkSplit

CONV = "aten.conv2d.default"
BATCH_NORM = "aten.batch_norm.default"
# Layers that act on each channel alone, so that stacked channels pass through untouched.
CHANNELWISE = {"aten.relu.default", "aten.relu_.default", "aten.hardtanh.default", "aten.hardtanh_.default",
               "aten.silu.default", "aten.hardswish.default", "aten.gelu.default", "aten.sigmoid.default",
               "aten.add.Tensor", "aten.mul.Tensor", "aten.max_pool2d.default", "aten.avg_pool2d.default",
               "aten.adaptive_avg_pool2d.default", "aten.dropout.default"}
FLATTEN = "aten.flatten.using_ints"


class Unstackable(ValueError):
    """The graphs cannot run as one stacked network; the message says why."""


def _weight(graph_module: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    return operator.attrgetter(node.target)(graph_module).detach()


def stack_graphs(graphs: list[fx.GraphModule]) -> fx.GraphModule:
    """x -> the graphs' outputs side by side along dim 1, computed as one network.

    The graphs must be the same architecture (same layers in the same order, same
    hyperparameters) and end in [N, d] features or [N, C, ...] activations."""
    count = len(graphs)
    node_lists = [list(g.graph.nodes) for g in graphs]
    if any(len(nodes) != len(node_lists[0]) for nodes in node_lists):
        raise Unstackable("the networks' graphs differ in length")
    stacked_graph, root = fx.Graph(), nn.Module()
    env: dict[fx.Node, fx.Node] = {}
    stacked: set[fx.Node] = set()  # nodes whose output holds every network's channels

    def constant(tensors: list[torch.Tensor | None]) -> fx.Node | None:
        if tensors[0] is None:
            return None
        name = f"stacked_{len(root._buffers)}"
        root.register_buffer(name, torch.cat(tensors).clone())
        return stacked_graph.get_attr(name)

    def weights(position: int, nodes: tuple[fx.Node, ...]) -> list[torch.Tensor | None]:
        args = [node.args[position] if len(node.args) > position else None for node in nodes]
        return [_weight(g, a) if isinstance(a, fx.Node) else None for g, a in zip(graphs, args)]

    for nodes in zip(*node_lists):
        node, target = nodes[0], str(nodes[0].target)
        if any(other.op != node.op or str(other.target) != target for other in nodes[1:]):
            raise Unstackable(f"the networks' graphs differ at {node.name}")
        if node.op == "placeholder":
            env[node] = stacked_graph.placeholder(node.name)
        elif node.op == "get_attr":
            continue  # read by the layer that uses it, network by network
        elif not node.users and node.op != "output":
            continue  # nothing reads it: torch.export's input guards, say
        elif node.op == "output":
            (result,) = node.args[0] if isinstance(node.args[0], (tuple, list)) else (node.args[0],)
            if result not in stacked:
                raise Unstackable("the networks' output does not depend on their layers")
            stacked_graph.output(env[result])
        elif node.kwargs and target in (CONV, BATCH_NORM):
            raise Unstackable(f"{node.name} has keyword arguments")
        elif target == CONV:
            x, rest = node.args[0], list(node.args[3:]) + [None] * (7 - len(node.args))
            stride, padding, dilation, groups = rest[0] or [1, 1], rest[1] or [0, 0], rest[2] or [1, 1], rest[3] or 1
            if any(list(other.args[3:]) != list(node.args[3:]) for other in nodes[1:]):
                raise Unstackable(f"the networks' convolutions differ at {node.name}")
            if x in stacked:
                groups *= count  # network k's groups read network k's channels only
            elif groups != 1:
                raise Unstackable(f"{node.name} is a grouped convolution of the shared input")
            env[node] = stacked_graph.call_function(node.target, (
                env[x], constant(weights(1, nodes)), constant(weights(2, nodes)), stride, padding, dilation, groups))
            stacked.add(node)
        elif target == BATCH_NORM:
            if node.args[0] not in stacked or any(other.args[5:] != node.args[5:] for other in nodes[1:]):
                raise Unstackable(f"the batch norm {node.name} cannot be stacked")
            statistics = [constant(weights(i, nodes)) for i in range(1, 5)]
            env[node] = stacked_graph.call_function(node.target, (env[node.args[0]], *statistics, *node.args[5:]))
            stacked.add(node)
        elif target in CHANNELWISE or (target == FLATTEN and tuple(node.args[1:2]) == (1,)):
            inputs = [a for a in node.args if isinstance(a, fx.Node)]
            if not inputs or any(a not in stacked for a in inputs):
                raise Unstackable(f"{node.name} mixes the networks' layers with something else")
            if any(other.args[len(inputs):] != node.args[len(inputs):] or other.kwargs != node.kwargs
                   for other in nodes[1:]):
                raise Unstackable(f"the networks differ at {node.name}")
            env[node] = stacked_graph.call_function(
                node.target, tuple(env[a] if isinstance(a, fx.Node) else a for a in node.args), dict(node.kwargs))
            stacked.add(node)
        else:
            raise Unstackable(f"{node.name} ({target}) is not a layer known to act on each channel alone")
    stacked_graph.lint()
    return fx.GraphModule(root, stacked_graph)


class SeparateNetworks(nn.Module):
    """h -> (B's features, each M''s features, E's logits), the networks one after another."""

    def __init__(self, expert: TrunkSplit, auxiliaries: list[TrunkSplit], exposed: nn.Module):
        super().__init__()
        self.expert, self.exposed = expert.trunk, exposed
        self.auxiliaries = nn.ModuleList(split.trunk for split in auxiliaries)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        return self.expert(h), [auxiliary(h) for auxiliary in self.auxiliaries], self.exposed(h)


class StackedNetworks(nn.Module):
    """The same as SeparateNetworks, from one pass of the networks stacked (`stack_graphs`)."""

    def __init__(self, expert: TrunkSplit, auxiliaries: list[TrunkSplit], exposed: TrunkSplit):
        super().__init__()
        splits = [expert, *auxiliaries, exposed]
        self.count = len(splits)
        self.stacked = stack_graphs([split.trunk for split in splits])
        self.exposed_classifier = exposed.head

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        features = self.stacked(h).chunk(self.count, dim=1)
        return features[0], list(features[1:-1]), self.exposed_classifier(features[-1])
