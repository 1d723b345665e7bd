"""Where the input's own frequency content puts it: the Mahalanobis distance of its block
spectrum (log energy of its 2-D DCT in bands) to the clean inputs of the class M predicts.

Every other first-stage rule reads a network, so every one of them sees a trigger only
as far as the networks let it through; a backdoor that moves few of its inputs (digits/ViT
SIG: 13% of them) leaves the networks' outputs and activations nearly clean. The
trigger itself is still in the pixels, and most triggers are odd in frequency: a
sinusoid (SIG) is one sharp peak, a patch or a blended pattern adds edges and texture
the clean images of a class do not have. The spectrum is computed from the input alone,
so it needs no model and costs two small matrix products a side; its Gaussians are the
build's clean set's, per class as M's other Gaussians are, because what a class's clean
images hold in frequency differs from class to class. Alone it scores every digits
badnets, blend, SIG and trojan cell of the matrix at AUROC 1.000 and shapes all2all at
1.000; in the verdict it lifts digits/ViT SIG from 0.930 to 1.000. It is blind where a
trigger takes energy out rather than adding it (shapes WaNet's warp, alone 0.23; the
faint blend of adaptive_blend, 0.55-0.66), which is why it is one piece of evidence
among the others, at half weight (docs/METHODS.md, "The spectrum rule").

The spectrum: each channel's orthonormal DCT-II over rows and columns, the squared
coefficients averaged in a grid of bands (coefficients split evenly into at most
MAX_BANDS bands a side, COEFFICIENTS_PER_BAND each where the side allows), the log of
each band's mean energy plus FLOOR. FLOOR is in the model's input units, squared, far
below the energy of a band that holds an image's content (pixels in [0, 1] or
standardised): bands emptier than that all look the same, which keeps float32 (the
fused graph) and float64 (these rules) close where a band holds almost no energy.
"""

from __future__ import annotations

import numpy as np

from firewall.rules.base import FirstStageRule
from firewall.rules.mahalanobis import mahalanobis_by_class

MAX_BANDS = 8
COEFFICIENTS_PER_BAND = 4
FLOOR = 1e-3


def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II as an [n, n] matrix: coefficients = D @ signal."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    d = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    d[0] /= np.sqrt(2.0)
    return d


def band_count(n: int) -> int:
    """How many bands a side of n coefficients is split into."""
    return min(MAX_BANDS, max(1, n // COEFFICIENTS_PER_BAND))


def band_matrix(n: int) -> np.ndarray:
    """[bands, n]: row b averages the coefficients of band b (evenly split, low to high)."""
    bands = band_count(n)
    matrix = np.zeros((bands, n))
    for b, members in enumerate(np.array_split(np.arange(n), bands)):
        matrix[b, members] = 1.0 / len(members)
    return matrix


def spectrum_operators(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(DCT of the rows' side [H, H], of the columns' [W, W], bands of each [Bh, H], [Bw, W])."""
    return dct_matrix(height), dct_matrix(width), band_matrix(height), band_matrix(width)


def block_spectrum(x: np.ndarray) -> np.ndarray:
    """[N, C, H, W] inputs -> [N, C * Bh * Bw] log band energies (see the module's docstring)."""
    x = np.asarray(x, np.float64)
    if x.ndim != 4:
        raise ValueError(f"the spectrum rule reads images [N, C, H, W], got an array of shape {x.shape}")
    dct_h, dct_w, bands_h, bands_w = spectrum_operators(*x.shape[2:])
    coefficients = dct_h @ x @ dct_w.T
    energy = bands_h @ (coefficients * coefficients) @ bands_w.T
    return np.log(energy + FLOOR).reshape(len(x), -1)


def spectrum_mahalanobis_by_class(x: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """[N, K]: the squared Mahalanobis distance of each input's block spectrum to each class's clean mean."""
    return mahalanobis_by_class(block_spectrum(x), means, precision)


class SpectrumMahalanobisRule(FirstStageRule):
    """Served from the fused graph as `spectrum_mahalanobis_by_class`."""

    name = "spectrum_mahalanobis"
