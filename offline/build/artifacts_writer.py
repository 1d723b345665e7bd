"""An artifacts directory written all or nothing: every model as ONNX (each checked
against torch), the fused first-stage graphs, the torch programs the engine benchmark
compares with, the STRIP bank, the class Gaussians and a manifest that pins each file
by its digest.

Kept apart from the build's training so that every producer of an artifacts set (the
build, and the serving benchmarks' sets of untrained networks) writes the one format
the sidecar loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

import firewall
from firewall.artifacts import (CLASS_GAUSSIANS, FUSED_FILES, MANIFEST, MODEL_FILES, REVERSED_TRIGGER,
                                SCHEMA_VERSION, STRIP_BANK, TORCH_FILES, sha256_file)
from firewall.rules.spectrum_mahalanobis import FLOOR, band_count
from offline.atomic import atomic_directory
from offline.build.class_gaussians import ClassGaussians, FeatureSpace, LayerSpace, save_class_gaussians
from offline.build.fused_export import export_fused
from offline.build.layer_taps import PooledLayers
from offline.build.onnx_export import INPUT_NAME, OUTPUT_NAME, check_export, export_onnx
from offline.build.reversed_trigger import ReversedTrigger
from offline.build.trigger_direction import TriggerDirection
from offline.build.trunk_split import Composed, TrunkSplit
from offline.model_io import save_pt2


def write_artifacts(out: Path, force: bool, *, models: dict[str, nn.Module], penultimate: TrunkSplit,
                    gaussians: ClassGaussians, expert_space: FeatureSpace,
                    auxiliary_spaces: dict[str, FeatureSpace], layers: LayerSpace,
                    spectrum: ClassGaussians, direction: TriggerDirection, example: np.ndarray,
                    check_x: np.ndarray, bank: np.ndarray, description: dict,
                    reversed_trigger: ReversedTrigger | None = None, trunk: nn.Module | None = None,
                    stack_networks: bool = False) -> dict:
    """Writes the classifiers `models` (by role: original, expert, exposed and the auxiliaries,
    whole networks from the input) and the rules' feature extractors to `out`, and returns
    the manifest.

    `penultimate` is M cut before its classifier layer (the Mahalanobis rule's features),
    `expert_space` B cut the same way with its Gaussians (the expert posterior rule),
    `auxiliary_spaces` each auxiliary's by role (its posterior rule),
    `layers` M's tapped layers with theirs (the layer-Mahalanobis rule), `spectrum` the
    inputs' block spectra's (the spectrum rule), `direction` the trigger-direction rule's map
    of M's penultimate features (fitted from `reversed_trigger`, kept beside it where the
    build named a suspected target); all of them cut M, B or an auxiliary
    (their heads, with a shared `trunk`, which the fine-tunes left alone), and the feature
    extractors are exported as those cuts after the trunk. `stack_networks` runs
    B, the auxiliaries and E as one stacked network in the fused graphs where it can. `description` holds
    what only the producer knows (name, normalization, source_model, build, models); the
    file digests, shapes and export checks are added here.
    """
    description = dict(description)
    own_spaces = {"expert": expert_space, **auxiliary_spaces}
    models = {**models, **_feature_extractors(penultimate, own_spaces, layers, trunk)}
    example_tensor = torch.from_numpy(np.ascontiguousarray(example, np.float32))
    input_shape = list(example.shape[1:])
    with torch.no_grad():
        num_classes = int(models["original"](example_tensor).shape[1])
    with atomic_directory(out, force) as scratch:
        onnx_check = {}
        for role, module in models.items():
            path = scratch / MODEL_FILES[role]
            export_onnx(module, example_tensor, path)
            onnx_check[role] = check_export(module, path, check_x)
            if role in TORCH_FILES:
                (scratch / TORCH_FILES[role]).parent.mkdir(exist_ok=True)
                save_pt2(module, example_tensor, scratch / TORCH_FILES[role])
        fused_check, fused_networks = export_fused(models, penultimate.head, gaussians, expert_space,
                                                   auxiliary_spaces, layers, spectrum, direction,
                                                   example_tensor, scratch, check_x, trunk, stack_networks)
        onnx_check.update(fused_check)
        np.save(scratch / STRIP_BANK, bank.astype(np.float32), allow_pickle=False)
        save_class_gaussians(scratch, gaussians, own_spaces, layers, spectrum, direction)
        if reversed_trigger is not None:
            reversed_trigger.save(scratch / REVERSED_TRIGGER)
        normalization = description.pop("normalization")
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "name": description.pop("name"),
            "created_by": f"backdoor-firewall {firewall.__version__}",
            "input": {"name": INPUT_NAME, "shape": input_shape, "datatype": "FP32", "normalization": normalization},
            "output": {"name": OUTPUT_NAME, "shape": [num_classes], "datatype": "FP32"},
            "num_classes": num_classes,
            "files": {f: {"sha256": sha256_file(scratch / f)}
                      for f in [*(MODEL_FILES[role] for role in models), *FUSED_FILES.values(),
                                *(TORCH_FILES[role] for role in models if role in TORCH_FILES), STRIP_BANK,
                                CLASS_GAUSSIANS, *([REVERSED_TRIGGER] if reversed_trigger is not None else [])]},
            **description,
            "mahalanobis": {"features_after": penultimate.cut, **gaussians.to_json()},
            "auxiliary_posterior": {role: space.to_json() for role, space in auxiliary_spaces.items()},
            "expert_posterior": expert_space.to_json(),
            "layer_mahalanobis": layers.to_json(),
            "spectrum_mahalanobis": {"bands": [band_count(side) for side in input_shape[1:]], "floor": FLOOR,
                                     **spectrum.to_json()},
            "trigger_direction": direction.report,
            "fused_networks": fused_networks,  # B, the auxiliaries and E stacked into one network, or why not
            "onnx_max_relative_diff": onnx_check,  # absolute below 1 (onnx_export.relative_difference)
        }
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


def _feature_extractors(penultimate: TrunkSplit, own_spaces: dict[str, FeatureSpace], layers: LayerSpace,
                        trunk: nn.Module | None) -> dict[str, nn.Module]:
    """The models the separate-session path and the fused graphs' checks read features from,
    by file role: M's penultimate features, B's and each auxiliary's own, M's pooled layers.
    Each whole from the input, so a shared trunk runs first."""
    def from_input(part: nn.Module) -> nn.Module:
        return Composed(trunk, part) if trunk is not None else part
    return {"features": from_input(penultimate.trunk),
            **{f"{role}_features": from_input(space.split.trunk) for role, space in own_spaces.items()},
            "layer_features": PooledLayers(layers.tapped, trunk)}
