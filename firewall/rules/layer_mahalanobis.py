"""Where M's own layers put the input at several depths: the Mahalanobis distance of M's
pooled activations at six layers to the clean inputs of the class M predicts, each
layer's distance divided by its typical clean value, summed.

The Mahalanobis rule reads M's penultimate features, where a backdoor has already been
folded into the target's region. Earlier layers still see the trigger as what it is: a
patch or a blend is an odd spread of low-level activations long before M decides
anything. On the ViT, whose last features the other first-stage rules read poorly, this
lifts the weakest cells (the verdict on digits/ViT blend seed 1 AUROC 0.947 -> 0.996,
SIG 0.846 -> 0.890), at the cost of the attack built to keep triggered inputs'
representations mixed with clean ones (adaptive_blend 0.961 -> 0.950 on shapes/VGG width
8): docs/METHODS.md, "The layer-Mahalanobis rule". The layers, their pooling and the Gaussians are fitted at
build time (offline/build/layer_taps.py, offline/build/class_gaussians.py).
"""

from __future__ import annotations

import numpy as np

from firewall.rules.base import FirstStageRule
from firewall.rules.mahalanobis import mahalanobis_by_class

# A tapped layer's clean class Gaussians and scale: (means [K, d], precision [d, d], scale).
LayerGaussians = tuple[np.ndarray, np.ndarray, float]


def layer_mahalanobis_by_class(pooled: np.ndarray, layers: list[LayerGaussians]) -> np.ndarray:
    """[N, K] from the tapped layers' pooled activations side by side, [N, sum of d]."""
    widths = np.cumsum([means.shape[1] for means, _, _ in layers])[:-1]
    parts = np.split(np.asarray(pooled, np.float64).reshape(len(pooled), -1), widths, axis=1)
    return sum(mahalanobis_by_class(part, means, precision) / scale
               for part, (means, precision, scale) in zip(parts, layers))


class LayerMahalanobisRule(FirstStageRule):
    """Served from the fused graph as `layer_mahalanobis_by_class`."""

    name = "layer_mahalanobis"
