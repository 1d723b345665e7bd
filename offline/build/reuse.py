"""`offline build --reuse-models PRIOR`: build the scoring graphs again around the fine-tuned
models of an earlier build of the same model on the same clean set.

Fine-tuning B, E and each M' is nearly all of a build's time (hours on a real model);
the graphs, the class Gaussians and the checks around them take minutes. When a new
version adds a rule or changes the artifacts' schema, the fine-tuned models are still
the ones the earlier build made, so only the rest needs making again. The earlier set's
torch programs are checked against its manifest's digests and loaded like any model
(offline/model_io.py: never unpickled), and they are taken only if that build read the
same clean rows with the same auxiliary method and its M answers exactly as this one
does: models fine-tuned from another M, or on other data, would not belong to this build.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from firewall.artifacts import MANIFEST, REVERSED_TRIGGER, TORCH_FILES, sha256_file
from firewall.errors import UserError
from offline.build.reversed_trigger import ReversedTrigger
from offline.build.stages import expert_chosen_as_builds_now_do
from offline.data.tensorsets import TensorSet
from offline.model_io import load_pt2
from offline.training import forward

# M's logits in the earlier set against this build's M: the same model reloaded differs by
# float rounding at most; another model by order one.
MAX_LOGIT_DIFF = 1e-4


@dataclass(frozen=True)
class PriorModels:
    models: dict[str, nn.Module]  # by role: expert, exposed and the auxiliaries
    reports: dict[str, dict]  # how the earlier build made each, as its manifest recorded it
    source: dict  # where they came from, for this build's manifest
    target_identification: dict | None  # the earlier build's, which depends only on M and the clean rows checked here
    reversed_trigger: ReversedTrigger | None  # the one it kept for its suspected target, if it named one


def load_prior_models(prior: Path, model: nn.Module, clean: TensorSet, auxiliary_method: str,
                      roles: list[str]) -> PriorModels:
    """The fine-tuned models `roles` of the artifacts set `prior`, once it is shown to be a
    build of `model` on `clean` with `auxiliary_method`."""
    manifest_path = prior / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        build, files = manifest["build"], manifest["files"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"--reuse-models {prior}: {manifest_path} is not a readable artifacts manifest ({exc})") from exc
    if build.get("shared_trunk"):
        raise UserError(f"--reuse-models {prior}: that set was built with --shared-trunk, whose fine-tuned models "
                        "are heads on M's trunk; build it again without --reuse-models")
    if build.get("auxiliary_method") != auxiliary_method:
        raise UserError(f"--reuse-models {prior}: that set was built with --auxiliary {build.get('auxiliary_method')}, "
                        f"this build asks for {auxiliary_method}")
    if build.get("clean_row_digests") != clean.row_digests():
        raise UserError(f"--reuse-models {prior}: that set was built on other clean rows than --clean-data; its "
                        "fine-tuned models would not match this build's class Gaussians and held-out checks")
    if "expert" in roles and not expert_chosen_as_builds_now_do(manifest["models"]["expert"]):
        raise UserError(f"--reuse-models {prior}: that set's backdoor expert met its criterion at the first check, "
                        "which builds now take only when no learning rate meets it later; build it again without "
                        "--reuse-models")
    # Read and checked here rather than by firewall.artifacts.load_artifacts, which refuses a
    # set of an older schema: the very sets this option exists to take the models from.
    loaded = {role: _verified_program(prior, files, role) for role in ["original", *roles]}
    reloaded_m, this_m = forward(loaded.pop("original"), clean.x), forward(model, clean.x)
    difference = float(np.abs(reloaded_m - this_m).max() / max(1.0, np.abs(this_m).max()))
    if not difference <= MAX_LOGIT_DIFF:
        raise UserError(f"--reuse-models {prior}: that set's M differs from --model on the clean rows (relative logit "
                        f"difference {difference:.3g}); its fine-tuned models belong to another model")
    reports = {role: {**manifest["models"][role], "reused": True} for role in roles}
    source = {"artifacts": str(prior), "manifest_sha256": sha256_file(manifest_path)}
    identification = manifest.get("target_identification")
    return PriorModels(loaded, reports, source, identification, _verified_trigger(prior, files, identification))


def _verified_trigger(prior: Path, files: dict, identification: dict | None) -> ReversedTrigger | None:
    """The reversed trigger the earlier identification kept, checked against its manifest's digest."""
    if not (identification or {}).get("reversed_trigger"):
        return None
    return ReversedTrigger.load(_verified_file(prior, files, REVERSED_TRIGGER))


def _verified_program(prior: Path, files: dict, role: str) -> nn.Module:
    return load_pt2(_verified_file(prior, files, TORCH_FILES[role])).module()


def _verified_file(prior: Path, files: dict, filename: str) -> Path:
    """The earlier set's `filename`, once it is shown to be the file its manifest pins."""
    entry = files.get(filename)
    if entry is None:
        raise UserError(f"--reuse-models {prior}: its manifest lists no {filename}")
    path = prior / filename
    if not path.is_file() or sha256_file(path) != entry.get("sha256"):
        raise UserError(f"--reuse-models {prior}: {path} is missing or differs from its manifest's sha256")
    return path
