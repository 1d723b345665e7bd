"""The artifacts directory: manifest, ONNX models, STRIP bank, class Gaussians, thresholds.

The sidecar trusts nothing it has not checked: every file listed in the manifest is
verified against its sha256 before a session is created, so a swapped or corrupted
model stops the firewall at start instead of silently changing what it rejects.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from firewall.errors import ArtifactError

SCHEMA_VERSION = 9
MANIFEST = "manifest.json"
THRESHOLDS = "thresholds.json"
STRIP_BANK = "strip_bank.npy"
# Clean class means and a shared precision matrix in a penultimate feature space (also
# inside the fused graphs as constants): `means`, `precision` in M's (the Mahalanobis
# rule's), `<role>_means`, `<role>_precision` in each auxiliary's and in B's (their posterior rules'),
# `layer<i>_means`, `layer<i>_precision` at M's tapped layers with their `layer_scales` (the
# layer-Mahalanobis rule's), `spectrum_means`, `spectrum_precision` of the inputs' block
# spectra (the spectrum rule's); and, in M's penultimate features too, the trigger-direction
# rule's linear map to every class's score, `trigger_direction_weights` [d, K] and
# `trigger_direction_bias` [K] (all zero where the build named no suspected target).
CLASS_GAUSSIANS = "class_gaussians.npz"
# The suspected target's reverse-engineered mask and pattern (offline/build/reversed_trigger.py),
# in sets whose build named one: what the trigger-direction rule was fitted from.
REVERSED_TRIGGER = "reversed_trigger.npz"
MODEL_FILES = {
    "original": "original.onnx",
    "expert": "expert.onnx",
    "auxiliary": "auxiliary.onnx",
    "exposed": "exposed.onnx",
    "features": "features.onnx",  # M up to its penultimate layer
    "auxiliary_tsbd": "auxiliary_tsbd.onnx",  # TSBD's M' beside the fine-tuned one (`--auxiliary both`)
    "auxiliary_features": "auxiliary_features.onnx",  # M' up to its penultimate layer
    "auxiliary_tsbd_features": "auxiliary_tsbd_features.onnx",
    "expert_features": "expert_features.onnx",  # B up to its penultimate layer
    "layer_features": "layer_features.onnx",  # M's tapped layers' pooled activations, side by side
}
# Models only some builds have (a first-stage rule that needs one is computed only where
# it is: firewall.rules.first_stage_rules).
OPTIONAL_MODELS = ("auxiliary_tsbd", "auxiliary_tsbd_features")
# The first-stage rules as one graph each (offline/build/fused_export.py): with M's
# prediction inside, and without M for when the prediction comes from the upstream.
FUSED_FILES = {
    "fused": "fused.onnx",
    "fused_without_original": "fused_without_original.onnx",
}
# Their int8 copies (`offline quantize`, offline/build/quantize.py), which only sets that were
# quantized have; thresholds.json says which of the two its thresholds were fitted on.
INT8_FUSED_FILES = {role: filename.replace(".onnx", ".int8.onnx") for role, filename in FUSED_FILES.items()}
PRECISIONS = ("fp32", "int8")
PREDICTION_OUTPUT = "prediction"
# The fused graphs' per-class score outputs, by the rule that reads them.
BY_CLASS_OUTPUTS = {"badexpert": "badexpert_by_class", "badexpert_tsbd": "badexpert_tsbd_by_class",
                    "exposed": "exposed_by_class", "mahalanobis": "mahalanobis_by_class",
                    "auxiliary_posterior": "auxiliary_posterior_by_class",
                    "auxiliary_tsbd_posterior": "auxiliary_tsbd_posterior_by_class",
                    "expert_posterior": "expert_posterior_by_class",
                    "layer_mahalanobis": "layer_mahalanobis_by_class",
                    "spectrum_mahalanobis": "spectrum_mahalanobis_by_class",
                    "trigger_direction": "trigger_direction_by_class"}
# The one first-stage rule no graph computes: its score for every class comes from the
# manifest (the class the build suspects to be the backdoor's target; firewall/rules/target_class.py).
TARGET_CLASS_RULE = "target_class"
# The classifiers as torch.export programs, for the eager-PyTorch engine benchmark
# (which cuts M's features from M itself). Listed and hashed like every file; the
# sidecar never opens them.
TORCH_FILES = {role: f"torch/{role}.pt2"
               for role in ("original", "expert", "auxiliary", "exposed", "auxiliary_tsbd")}


def write_json_atomically(path: Path, data: Any) -> None:
    """Write through a temporary file and a rename, so a reader (a sidecar starting, a
    calibration running) never sees half a manifest or thresholds file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean/std that map pixels in [0, 1] to the model's input space.

    Rules that act on pixels (STRIP superimposition, SCALE-UP amplification) need it;
    identity (mean 0, std 1) means the model takes pixels directly.
    """

    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def _shaped(self, values: tuple[float, ...], ndim: int) -> np.ndarray:
        array = np.asarray(values, dtype=np.float32)
        return array.reshape((1, -1) + (1,) * (ndim - 2)) if ndim > 2 else array

    def to_pixels(self, x: np.ndarray) -> np.ndarray:
        return x * self._shaped(self.std, x.ndim) + self._shaped(self.mean, x.ndim)

    def from_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return (pixels - self._shaped(self.mean, pixels.ndim)) / self._shaped(self.std, pixels.ndim)


@dataclass(frozen=True)
class Manifest:
    name: str
    input_name: str
    input_shape: tuple[int, ...]
    input_datatype: str
    output_name: str
    num_classes: int
    normalization: Normalization
    files: dict[str, str]
    raw: dict[str, Any] = field(repr=False, compare=False)
    suspected_target: int | None = None  # the class the build found the backdoor sends inputs to, if any

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Manifest":
        try:
            if data["schema_version"] != SCHEMA_VERSION:
                raise ArtifactError(
                    f"manifest schema_version {data['schema_version']} is not {SCHEMA_VERSION}: "
                    "rebuild the artifacts with this version's `offline build` (`--reuse-models` the old "
                    "directory keeps its fine-tuned models: minutes instead of hours)"
                )
            norm = data["input"].get("normalization", {})
            return cls(
                name=str(data["name"]),
                input_name=str(data["input"]["name"]),
                input_shape=tuple(int(d) for d in data["input"]["shape"]),
                input_datatype=str(data["input"]["datatype"]),
                output_name=str(data["output"]["name"]),
                num_classes=int(data["num_classes"]),
                normalization=Normalization(
                    mean=tuple(norm.get("mean", (0.0,))), std=tuple(norm.get("std", (1.0,)))
                ),
                files={name: str(entry["sha256"]) for name, entry in data["files"].items()},
                raw=data,
                suspected_target=_suspected_target(data),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"manifest.json is missing or has a malformed key ({exc!r})") from exc


def _suspected_target(data: dict[str, Any]) -> int | None:
    """The build's suspected target class; None where it named none or did not look (a build with
    `--target-identification-steps 0`)."""
    target = (data.get("target_identification") or {}).get("suspected_target")
    if target is None:
        return None
    if not 0 <= int(target) < int(data["num_classes"]):
        raise ValueError(f"target_identification.suspected_target {target} is not a class")
    return int(target)


@dataclass(frozen=True)
class Artifacts:
    """A verified artifacts directory."""

    root: Path
    manifest: Manifest
    manifest_sha256: str

    def path(self, filename: str) -> Path:
        return self.root / filename

    def model_path(self, role: str, precision: str = "fp32") -> Path:
        """The ONNX file of a model or a fused graph; `precision` picks the fused graphs' int8 copies."""
        if precision == "int8" and role in INT8_FUSED_FILES:
            filename = INT8_FUSED_FILES[role]
            if filename not in self.manifest.files:
                raise ArtifactError(f"{self.root} has no int8 graphs: run `offline quantize --artifacts {self.root} "
                                    "--clean-data CLEAN.npz` first (or calibrate with --precision fp32)")
            return self.root / filename
        return self.root / {**MODEL_FILES, **FUSED_FILES}[role]

    @property
    def model_roles(self) -> tuple[str, ...]:
        """The models this set has: every one of MODEL_FILES but the optional ones it was built without."""
        return tuple(role for role, filename in MODEL_FILES.items() if filename in self.manifest.files)

    def strip_bank(self) -> np.ndarray:
        # allow_pickle=False: the bank is data, never code.
        return np.load(self.path(STRIP_BANK), allow_pickle=False)

    def class_gaussians(self, space: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(means [K, d], precision [d, d]) of M's penultimate features on clean data, or of
        another space's: an auxiliary model's (its role) or the inputs' block spectra ("spectrum")."""
        prefix = f"{space}_" if space else ""
        with np.load(self.path(CLASS_GAUSSIANS), allow_pickle=False) as stored:
            return stored[prefix + "means"], stored[prefix + "precision"]

    def trigger_direction(self) -> tuple[np.ndarray, np.ndarray]:
        """(weights [d, K], bias [K]): the trigger-direction rule's score for every class from M's
        penultimate features (firewall/rules/trigger_direction.py)."""
        with np.load(self.path(CLASS_GAUSSIANS), allow_pickle=False) as stored:
            return stored["trigger_direction_weights"], stored["trigger_direction_bias"]

    def layer_gaussians(self) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """(means, precision, scale) of each of M's tapped layers, in the layers' order."""
        with np.load(self.path(CLASS_GAUSSIANS), allow_pickle=False) as stored:
            return [(stored[f"layer{i}_means"], stored[f"layer{i}_precision"], float(scale))
                    for i, scale in enumerate(stored["layer_scales"])]


def load_artifacts(root: str | Path) -> Artifacts:
    """Read the manifest and check the sha256 of every file it lists."""
    root = Path(root)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{manifest_path} not found: run `offline build` to create {root}")
    try:
        data = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path} is not valid JSON ({exc}): rebuild the artifacts") from exc
    manifest = Manifest.from_json(data)
    required = ({f for role, f in MODEL_FILES.items() if role not in OPTIONAL_MODELS} | set(FUSED_FILES.values())
                | {STRIP_BANK, CLASS_GAUSSIANS})
    missing_entries = required - set(manifest.files)
    if missing_entries:
        raise ArtifactError(f"manifest.json lists no sha256 for {sorted(missing_entries)}: rebuild the artifacts")
    for filename, expected in manifest.files.items():
        path = root / filename
        if not path.is_file():
            raise ArtifactError(f"{path} is missing: rebuild the artifacts with `offline build`")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(
                f"{path} has sha256 {actual[:16]}… but the manifest says {expected[:16]}…: "
                "the file was modified after `offline build`; refusing to use it"
            )
    return Artifacts(root=root, manifest=manifest, manifest_sha256=sha256_file(manifest_path))
