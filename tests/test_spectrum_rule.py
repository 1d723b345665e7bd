"""The spectrum rule: an input's block spectrum, and its distance to the clean inputs of a class."""

import numpy as np
import pytest
import torch

from firewall.rules.spectrum_mahalanobis import (FLOOR, band_matrix, block_spectrum, dct_matrix,
                                                 spectrum_mahalanobis_by_class)
from offline.build.class_gaussians import fit_spectrum_gaussians
from offline.build.fused_export import SpectrumMahalanobisByClass
from offline.data.tensorsets import TensorSet


@pytest.mark.parametrize("n", [1, 7, 16, 32])
def test_the_dct_is_orthonormal_so_energy_is_kept(n):
    d = dct_matrix(n)
    np.testing.assert_allclose(d @ d.T, np.eye(n), atol=1e-12)


@pytest.mark.parametrize("side, bands", [(3, 1), (16, 4), (28, 7), (32, 8), (224, 8)])
def test_bands_hold_four_coefficients_a_side_and_at_most_eight_bands(side, bands):
    matrix = band_matrix(side)
    assert matrix.shape == (bands, side)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0)  # each band is a mean
    assert ((matrix > 0).sum(axis=0) == 1).all()  # every coefficient in exactly one band


def test_a_sinusoid_lights_the_band_of_its_frequency():
    """SIG's trigger is a horizontal sinusoid: its energy sits in one band of columns."""
    columns = np.arange(32)
    x = np.zeros((1, 1, 32, 32))
    x[0, 0] += np.cos(np.pi * (2 * columns + 1) * 20 / 64)  # the 20th DCT basis function along the width
    energy = np.exp(block_spectrum(x).reshape(8, 8)) - FLOOR
    assert energy.argmax() == np.ravel_multi_index((0, 20 // 4), (8, 8))
    assert energy.max() > 100 * np.delete(energy.ravel(), energy.argmax()).max()


def test_a_stamped_patch_is_far_from_the_clean_class_in_spectrum():
    """A smooth clean set, and the same images with a checkerboard patch in a corner."""
    rng = np.random.default_rng(0)
    rows = np.linspace(0, 1, 16)
    clean = np.stack([np.outer(np.sin(rows * f), np.cos(rows * g))[None] + 0.01 * rng.standard_normal((1, 16, 16))
                      for f, g in rng.uniform(0.5, 3, size=(300, 2))]).astype(np.float32)
    labels = np.arange(300) % 3
    gaussians = fit_spectrum_gaussians(TensorSet(clean, labels), 3)
    stamped = clean[:50].copy()
    stamped[:, 0, -4:, -4:] = np.indices((4, 4)).sum(axis=0) % 2
    own = np.arange(50) % 3
    clean_distance = spectrum_mahalanobis_by_class(clean[:50], gaussians.means, gaussians.precision)[np.arange(50), own]
    stamped_distance = spectrum_mahalanobis_by_class(stamped, gaussians.means, gaussians.precision)[np.arange(50), own]
    assert stamped_distance.min() > np.percentile(clean_distance, 99)


def test_the_graphs_spectrum_module_computes_the_rule_in_float32():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, size=(20, 3, 32, 32)).astype(np.float32)
    gaussians = fit_spectrum_gaussians(TensorSet(x, np.arange(20) % 2), 2)
    module = SpectrumMahalanobisByClass((3, 32, 32), gaussians.means, gaussians.precision)
    got = module(torch.from_numpy(x)).numpy()
    want = spectrum_mahalanobis_by_class(x, gaussians.means, gaussians.precision)
    np.testing.assert_allclose(got, want, rtol=1e-3)


def test_a_model_without_image_inputs_is_refused_with_a_reason():
    from firewall.errors import UserError

    with pytest.raises(UserError, match="images"):
        fit_spectrum_gaussians(TensorSet(np.zeros((10, 16), np.float32), np.arange(10) % 2), 2)
