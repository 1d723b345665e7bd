"""M's activations at several depths, pooled to one vector per layer and input: what the
layer-Mahalanobis rule reads (firewall/rules/layer_mahalanobis.py).

Which layers: TAPS activations evenly spaced, first to last, among the outputs of M's
nonlinearities (ReLU and its kin, GELU, SiLU, hardswish) and residual sums, found in the
torch.export graph so that any architecture gets the same rule. On the ViT the first of
them is the patch embedding plus the position embedding, where a patch or a blended
trigger is still plainly visible (alone it scores digits/ViT badnets and blend at AUROC
0.999-1.000, docs/METHODS.md). The count hardly matters: 4, 6 and 10 layers gave the
verdict the same mean AUROC over the matrix's 44 attack cases (session 25).

How an activation is pooled: [N, C, H, W] to the channels' means and standard deviations
over the spatial positions (a trigger changes the spread of a channel as much as its
level), [N, T, D] (a transformer's tokens) to the mean token, [N, D] as it is.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx, nn

from offline.build.trunk_split import single_output, subgraph

TAPS = 6
_NONLINEARITIES = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "gelu", "silu", "silu_", "hardswish",
                   "hardswish_", "leaky_relu", "leaky_relu_", "elu", "mish"}


def _is_layer_output(node: fx.Node) -> bool:
    """A nonlinearity's or a residual sum's output with a batch of vectors, tokens or maps."""
    if node.op != "call_function":
        return False
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor) or value.dim() not in (2, 3, 4) or not value.is_floating_point():
        return False
    op = getattr(node.target, "_opname", None)
    if op in ("add", "add_"):
        return all(isinstance(arg, fx.Node) for arg in node.args[:2])  # not x + 1e-5
    return op in _NONLINEARITIES


def tap_nodes(graph: fx.Graph, count: int = TAPS) -> list[fx.Node]:
    """`count` layer outputs evenly spaced among the graph's, its first and last included."""
    candidates = [node for node in graph.nodes if _is_layer_output(node)]
    if not candidates:
        raise ValueError("the model's graph has no nonlinearity or residual sum to read activations from")
    picks = np.unique(np.round(np.linspace(0, len(candidates) - 1, min(count, len(candidates)))).astype(int))
    return [candidates[i] for i in picks]


def pool(activation: torch.Tensor) -> torch.Tensor:
    """One vector per input (see the module's docstring)."""
    if activation.dim() == 4:
        mean = activation.mean(dim=(2, 3))
        # The variance as the mean squared deviation, which float32 cannot round below zero.
        deviation = activation - mean[:, :, None, None]
        return torch.cat([mean, (deviation * deviation).mean(dim=(2, 3)).sqrt()], dim=1)
    if activation.dim() == 3:
        return activation.mean(dim=1)
    return activation


class TappedFeatures(nn.Module):
    """M's features cut (its input to its penultimate features) that also returns the pooled
    activations of the tapped layers, so that one run of M's layers serves the Mahalanobis
    rule, the layer-Mahalanobis rule and, in the graph with M's prediction, the classifier."""

    def __init__(self, features: fx.GraphModule, count: int = TAPS):
        super().__init__()
        graph = features.graph
        (x,) = [node for node in graph.nodes if node.op == "placeholder"]
        taps = tap_nodes(graph, count)
        keep = [node for node in graph.nodes if node.op not in ("placeholder", "output", "get_attr")]
        self.graph_module = fx.GraphModule(features, subgraph(graph, keep, {x: x.name}, (single_output(graph), *taps)))
        self.names = tuple(node.name for node in taps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features, *activations = self.graph_module(x)
        return features, [pool(activation) for activation in activations]


class PooledLayers(nn.Module):
    """x -> the tapped layers' pooled activations side by side, [N, sum of their widths]: the
    artifacts' `layer_features` model, which the separate-session path and the checks read."""

    def __init__(self, tapped: TappedFeatures, trunk: nn.Module | None = None):
        super().__init__()
        self.trunk = trunk if trunk is not None else nn.Identity()
        self.tapped = tapped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.tapped(self.trunk(x))[1], dim=1)


@torch.no_grad()
def pooled_layers(tapped: TappedFeatures, x: np.ndarray, batch_size: int = 256) -> list[np.ndarray]:
    """Each tapped layer's pooled activations [N, width] on every row of x, in batches."""
    parts = [tapped(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])))[1]
             for i in range(0, len(x), batch_size)]
    return [np.concatenate([part[layer].numpy() for part in parts]) for layer in range(len(tapped.names))]
