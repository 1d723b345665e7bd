"""The layer-Mahalanobis rule's reading of M: which layers are tapped, how each activation
becomes one vector per input, and how the layers' distances add up."""

import numpy as np
import pytest
import torch
from torch import nn

from firewall.rules.layer_mahalanobis import layer_mahalanobis_by_class
from firewall.rules.mahalanobis import mahalanobis_by_class
from offline.build.class_gaussians import fit_layer_space
from offline.build.layer_taps import TAPS, TappedFeatures, pool, tap_nodes
from offline.build.trunk_split import split_before_classifier
from offline.data.tensorsets import TensorSet
from offline.models import ARCHITECTURES, create_model


def _exported(module: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    return torch.export.export(module.eval(), (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)).module()


class EightReluSteps(nn.Module):
    """Eight linear layers each followed by a ReLU, with a scalar add between them that is not a layer."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x)) + 1e-3
        return x


def test_the_taps_are_evenly_spaced_from_the_first_layer_to_the_last():
    graph = _exported(EightReluSteps(), torch.randn(2, 4)).graph
    relus = [n for n in graph.nodes if getattr(n.target, "_opname", None) == "relu"]
    taps = tap_nodes(graph, count=4)
    assert len(relus) == 8  # the scalar adds were not taken for residual sums
    assert [relus.index(n) for n in taps] == [0, 2, 5, 7]
    assert tap_nodes(graph, count=20) == relus  # never more layers than the model has


def test_a_model_without_nonlinearities_cannot_be_tapped():
    with pytest.raises(ValueError, match="no nonlinearity"):
        tap_nodes(_exported(nn.Linear(4, 3), torch.randn(2, 4)).graph)


def test_maps_pool_to_channel_means_and_spreads_tokens_to_their_mean():
    maps = torch.zeros(2, 3, 4, 4)
    maps[:, 1, :2] = 2.0  # channel 1: half the positions at 2, half at 0
    pooled = pool(maps)
    assert pooled.shape == (2, 6)
    assert torch.allclose(pooled[0], torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0]))
    constant = pool(torch.full((1, 2, 3, 3), 1e4))  # float32 rounding cannot make a spread negative
    assert torch.isfinite(constant).all() and (constant[:, 2:] == 0).all()
    tokens = torch.arange(24.0).reshape(1, 4, 6)
    assert torch.equal(pool(tokens), tokens.mean(dim=1))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_tapping_leaves_the_features_unchanged_and_reads_six_layers(arch):
    torch.manual_seed(0)
    model = create_model(arch, (3, 16, 16), num_classes=10, width=8)
    x = torch.randn(3, 3, 16, 16)
    cut = split_before_classifier(_exported(model, x))
    features, pooled = TappedFeatures(cut.trunk)(x)
    assert torch.equal(features, cut.trunk(x))
    assert len(pooled) == TAPS and all(p.shape[0] == 3 and p.ndim == 2 for p in pooled)


def test_each_layer_counts_its_distance_over_its_typical_clean_distance():
    torch.manual_seed(0)
    model = create_model("resnet", (1, 8, 8), num_classes=3, width=4)
    rng = np.random.default_rng(0)
    clean = TensorSet(rng.normal(size=(90, 1, 8, 8)).astype(np.float32), np.repeat(np.arange(3), 30))
    space = fit_layer_space(TappedFeatures(split_before_classifier(_exported(model, torch.from_numpy(clean.x[:2]))).trunk),
                            clean, num_classes=3)
    with torch.no_grad():
        pooled = [p.numpy() for p in space.tapped(torch.from_numpy(clean.x))[1]]
    for p, (means, precision, scale) in zip(pooled, space.arrays()):
        own = mahalanobis_by_class(p.astype(np.float64), means, precision)[np.arange(90), clean.y]
        assert np.median(own / scale) == pytest.approx(1.0)
    summed = layer_mahalanobis_by_class(np.concatenate(pooled, axis=1), space.arrays())
    expected = sum(mahalanobis_by_class(p.astype(np.float64), m, P) / s for p, (m, P, s) in zip(pooled, space.arrays()))
    assert np.allclose(summed, expected)
