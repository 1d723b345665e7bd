"""The Mahalanobis rule's clean fit: where M's penultimate features are read, and the class
Gaussians fitted to them."""

import numpy as np
import pytest
import torch

from firewall.errors import UserError
from firewall.rules.auxiliary_posterior import posterior_by_class
from firewall.rules.mahalanobis import mahalanobis_by_class
from offline.build.class_gaussians import fit_class_gaussians
from offline.build.fused_export import MahalanobisByClass, posterior_by_class_torch
from offline.build.trunk_split import split_before_classifier
from offline.models import ARCHITECTURES, create_model


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_the_features_are_what_the_classifier_layer_reads(arch):
    torch.manual_seed(0)
    model = create_model(arch, (3, 16, 16), num_classes=10, width=8).eval()
    x = torch.randn(3, 3, 16, 16)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    split = split_before_classifier(program.module())
    features = split.trunk(x)
    assert features.ndim == 2 and features.shape[0] == 3
    assert torch.allclose(split.head(features), model(x), atol=1e-5)
    assert split.head_parameters == (features.shape[1] + 1) * 10  # one linear layer: weights and bias


def test_inputs_off_their_class_cloud_score_higher_than_inputs_on_it():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 100)
    centres = rng.normal(0.0, 5.0, (3, 8))
    clean = centres[labels] + rng.normal(0.0, 1.0, (300, 8))
    gaussians = fit_class_gaussians(clean, labels, num_classes=3)
    fresh = centres[labels] + rng.normal(0.0, 1.0, (300, 8))
    shifted = fresh + 3.0  # predicted as the same class, away from where its clean inputs sit
    own = lambda f: mahalanobis_by_class(f, gaussians.means, gaussians.precision)[np.arange(300), labels]
    assert np.median(own(shifted)) > 5 * np.median(own(fresh))
    assert np.allclose(gaussians.means, [clean[labels == k].mean(axis=0) for k in range(3)], atol=1e-5)
    assert 0.0 <= gaussians.shrinkage <= 1.0


def test_more_features_than_clean_inputs_still_give_a_finite_precision():
    rng = np.random.default_rng(1)
    labels = np.arange(40) % 4
    gaussians = fit_class_gaussians(rng.normal(size=(40, 128)), labels, num_classes=4)
    assert np.isfinite(gaussians.precision).all() and gaussians.shrinkage > 0.0


def test_a_class_without_clean_samples_is_judged_against_all_clean_data():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 50)
    features = rng.normal(size=(100, 4)) + 4.0 * labels[:, None]
    gaussians = fit_class_gaussians(features, labels, num_classes=3)
    assert gaussians.classes_without_samples == (2,)
    assert np.allclose(gaussians.means[2], features.mean(axis=0), atol=1e-5)


def test_non_finite_features_are_refused():
    with pytest.raises(UserError, match="not finite"):
        fit_class_gaussians(np.full((10, 3), np.nan), np.zeros(10, int), num_classes=2)


def test_the_graphs_distances_hold_in_float32_when_features_share_a_large_offset():
    """ReLU features of a wide untrained network sit far from the origin, all in one
    direction; the fused graph's expanded distance must still match the float64 rule
    closely enough for the auxiliary posterior, which compares distances across classes."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 40)
    features = (50.0 + rng.normal(size=(400, 512)) + rng.normal(size=(10, 512))[y]).astype(np.float32)
    gaussians = fit_class_gaussians(features, y, num_classes=10)
    graph = MahalanobisByClass(gaussians.means, gaussians.precision)
    with torch.no_grad():
        got = posterior_by_class_torch(graph(torch.from_numpy(features))).numpy()
    want = posterior_by_class(mahalanobis_by_class(features.astype(np.float64), gaussians.means, gaussians.precision))
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-3
