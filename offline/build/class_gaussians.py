"""Clean inputs as one Gaussian per class in a model's penultimate feature space: in M's,
the Mahalanobis rule's parameters; in each auxiliary's and in B's, its posterior rule's; at each of
M's tapped layers, the layer-Mahalanobis rule's; of the inputs' block spectra, the
spectrum rule's.

Class means and one covariance shared by all classes, as in Lee et al.'s detector: a
few hundred clean inputs cannot estimate a covariance per class in a space of 64 to
512 features, and cannot quite estimate the shared one either (the sample covariance
is near singular when the features outnumber a class's inputs). The Ledoit-Wolf
estimate shrinks it toward a scaled identity by the amount that minimises its expected
error, computed from the same clean data, so there is no knob to tune (measured on
the 29 attack cells of session 6's matrix: shrinkage 0.03-0.07, and fixed shrinkages
of 0.01, 0.1 and 0.3 gave the fused verdict the same mean AUROC within 0.002).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.covariance import ledoit_wolf

from firewall.artifacts import CLASS_GAUSSIANS
from firewall.errors import UserError
from firewall.rules.layer_mahalanobis import LayerGaussians
from firewall.rules.mahalanobis import mahalanobis_by_class
from firewall.rules.spectrum_mahalanobis import block_spectrum
from offline.build.layer_taps import TappedFeatures, pooled_layers
from offline.build.trigger_direction import TriggerDirection
from offline.build.trunk_split import TrunkSplit
from offline.data.tensorsets import TensorSet
from offline.training import forward


@dataclass(frozen=True)
class ClassGaussians:
    means: np.ndarray  # [K, d]
    precision: np.ndarray  # [d, d], the inverse of the shrunk shared covariance
    shrinkage: float
    samples: int
    classes_without_samples: tuple[int, ...]

    def to_json(self) -> dict:
        return {"feature_dim": int(self.means.shape[1]), "ledoit_wolf_shrinkage": self.shrinkage,
                "samples": self.samples, "classes_without_samples": list(self.classes_without_samples)}


def fit_class_gaussians(features: np.ndarray, labels: np.ndarray, num_classes: int,
                        space: str = "M's penultimate features") -> ClassGaussians:
    """Class means and the shrunk shared precision of `features` [N, d] with true `labels`.

    A class with no clean sample gets the mean of all features: its inputs are then
    judged against the clean data as a whole rather than not at all.
    """
    features = np.asarray(features, np.float64).reshape(len(features), -1)
    if not np.isfinite(features).all():
        raise UserError(f"{space} on the clean set are not finite: check the clean data")
    overall = features.mean(axis=0)
    present = np.unique(labels)
    means = np.stack([features[labels == k].mean(axis=0) if k in present else overall for k in range(num_classes)])
    covariance, shrinkage = ledoit_wolf(features - means[labels], assume_centered=True)
    precision = np.linalg.pinv(covariance, hermitian=True)
    missing = tuple(int(k) for k in range(num_classes) if k not in present)
    return ClassGaussians(means.astype(np.float32), precision.astype(np.float32), float(shrinkage),
                          len(features), missing)


@dataclass(frozen=True)
class FeatureSpace:
    """A model cut before its classifier layer, and the class Gaussians of its features on
    the clean set."""

    split: TrunkSplit
    gaussians: ClassGaussians

    def to_json(self) -> dict:
        return {"features_after": self.split.cut, **self.gaussians.to_json()}


def fit_feature_space(split: TrunkSplit, clean: TensorSet, num_classes: int) -> FeatureSpace:
    """The class Gaussians of `clean`'s features at `split` (inputs already in the space the
    split's trunk reads)."""
    return FeatureSpace(split, fit_class_gaussians(forward(split.trunk, clean.x), clean.y, num_classes))


@dataclass(frozen=True)
class LayerSpace:
    """M's tapped layers (offline/build/layer_taps.py) and the class Gaussians of each one's
    pooled activations on the clean set, with the scale that puts the layers on one footing
    in the layer-Mahalanobis rule's sum: the median squared distance of the clean inputs to
    their own class's mean. Without it the widest layer would outvote the others (a
    distance grows with the dimension); the scale needs no data beyond the build's clean
    set (dividing by the dimension instead ranked the matrix's cells the same to within
    0.0006 of mean AUROC, docs/METHODS.md)."""

    tapped: TappedFeatures
    layers: tuple[ClassGaussians, ...]
    scales: tuple[float, ...]

    def arrays(self) -> list[LayerGaussians]:
        """(means, precision, scale) of each layer, as the rule and an artifacts set hold them."""
        return [(g.means, g.precision, scale) for g, scale in zip(self.layers, self.scales)]

    def to_json(self) -> dict:
        return {"layers": [{"node": name, "scale": scale, **gaussians.to_json()}
                           for name, gaussians, scale in zip(self.tapped.names, self.layers, self.scales)]}


def fit_layer_space(tapped: TappedFeatures, clean: TensorSet, num_classes: int) -> LayerSpace:
    """The class Gaussians and scale of each tapped layer on `clean` (inputs already in the
    space `tapped` reads)."""
    layers, scales = [], []
    for name, pooled in zip(tapped.names, pooled_layers(tapped, clean.x)):
        gaussians = fit_class_gaussians(pooled, clean.y, num_classes, space=f"M's activations at {name}")
        own = mahalanobis_by_class(pooled.astype(np.float64), gaussians.means, gaussians.precision)
        scale = float(np.median(own[np.arange(len(clean.y)), clean.y]))
        layers.append(gaussians)
        scales.append(scale if scale > 0 else 1.0)  # a layer whose clean distances vanish carries nothing either way
    return LayerSpace(tapped, tuple(layers), tuple(scales))


def fit_spectrum_gaussians(clean: TensorSet, num_classes: int) -> ClassGaussians:
    """The class Gaussians of the clean inputs' block spectra (firewall/rules/spectrum_mahalanobis.py)."""
    try:
        spectra = block_spectrum(clean.x)
    except ValueError as exc:
        raise UserError(f"the spectrum rule cannot read this model's inputs: {exc}") from None
    return fit_class_gaussians(spectra, clean.y, num_classes, space="the inputs' block spectra")


def save_class_gaussians(directory: Path, original: ClassGaussians, own_spaces: dict[str, FeatureSpace],
                         layers: LayerSpace, spectrum: ClassGaussians, direction: TriggerDirection) -> None:
    """One CLASS_GAUSSIANS file: M's under `means`/`precision`, B's and each auxiliary's (`own_spaces`,
    by role) under its role, M's tapped layers' under `layer<i>_` with their `layer_scales`, the
    spectra's under `spectrum_`, and the trigger-direction rule's map of M's features under
    `trigger_direction_`."""
    arrays = {"means": original.means, "precision": original.precision,
              "layer_scales": np.asarray(layers.scales, np.float64),
              "spectrum_means": spectrum.means, "spectrum_precision": spectrum.precision,
              "trigger_direction_weights": direction.weights, "trigger_direction_bias": direction.bias}
    for role, space in own_spaces.items():
        arrays |= {f"{role}_means": space.gaussians.means, f"{role}_precision": space.gaussians.precision}
    for i, gaussians in enumerate(layers.layers):
        arrays |= {f"layer{i}_means": gaussians.means, f"layer{i}_precision": gaussians.precision}
    with open(directory / CLASS_GAUSSIANS, "wb") as handle:
        np.savez(handle, **arrays)
