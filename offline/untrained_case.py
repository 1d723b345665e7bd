"""A case of untrained networks, for serving benchmarks at sizes this machine cannot train.

A ResNet-18 takes seconds per training step on two CPU cores, so a built set of that
size (hundreds of fine-tuning steps per model) is out of reach here, while its serving
cost is exactly what a GPU benchmark needs. Latency depends on the networks' graphs,
not on their weights' values: a convolution costs the same whatever its weights hold.
So M, B, each M' and E are independent fresh initialisations of one architecture,
written by the build's own writer (every per-model graph, the fused first-stage graphs,
the torch programs) and calibrated on clean data like any artifacts set. Their scores
detect nothing; their cost is that of a built set of the same architecture. The
manifest says so (`build.untrained`).

usage: python -m offline.untrained_case OUT [--arch resnet18] [--width 64] [--dataset shapes] [--seed 0]
       [--stack-networks] [--force]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from firewall.artifacts import sha256_file
from firewall.rules import auxiliary_roles, graph_rules
from offline.build.artifacts_writer import write_artifacts
from offline.build.class_gaussians import (fit_class_gaussians, fit_feature_space, fit_layer_space,
                                          fit_spectrum_gaussians)
from offline.build.layer_taps import TappedFeatures
from offline.build.pipeline import BuildConfig
from offline.build.trigger_direction import TriggerDirection
from offline.build.trunk_split import split_before_classifier
from offline.calibrate import CalibrateConfig, run_calibrate
from offline.data.splits import load_dataset, split_by_group
from offline.data.tensorsets import TensorSet
from offline.model_io import export_program
from offline.models import ARCHITECTURES, create_model
from offline.training import forward

ROLES = ("original", "expert", "exposed", "auxiliary", "auxiliary_tsbd")  # what the default build makes


@dataclass(frozen=True)
class UntrainedCaseConfig:
    out: Path
    arch: str = "resnet18"
    width: int = 64
    dataset: str = "shapes"
    clean_size: int = 300
    seed: int = 0
    stack_networks: bool = False  # as `offline build --stack-networks`
    force: bool = False


def _fresh(arch: str, input_shape: tuple[int, ...], num_classes: int, width: int, seed: int,
           example: torch.Tensor) -> nn.Module:
    """One independent initialisation, exported as the build's models are (eval mode, dynamic batch)."""
    torch.manual_seed(seed)
    return export_program(create_model(arch, input_shape, num_classes, width), example).module()


def make_untrained_case(config: UntrainedCaseConfig) -> dict:
    """Writes OUT/artifacts (calibrated), OUT/clean.npz, OUT/calib.npz and OUT/test_clean.npz
    as `offline poison` and `offline build` would, and OUT/case.json; returns the latter."""
    if config.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {config.arch!r}; choose one of {sorted(ARCHITECTURES)}")
    x, y, group = load_dataset(config.dataset, config.seed)
    splits = split_by_group(x, y, group, config.clean_size, np.random.default_rng(config.seed))
    input_shape, num_classes = tuple(x.shape[1:]), int(y.max()) + 1
    config.out.mkdir(parents=True, exist_ok=True)
    for name, split in (("clean", splits["clean"]), ("calib", splits["calib"]), ("test_clean", splits["test"])):
        TensorSet(split.x, split.y).save(config.out / f"{name}.npz")

    clean = splits["clean"]
    example = torch.from_numpy(clean.x[:2])
    models = {role: _fresh(config.arch, input_shape, num_classes, config.width, config.seed + k, example)
              for k, role in enumerate(ROLES)}
    penultimate = split_before_classifier(models["original"])
    with torch.no_grad():
        gaussians = fit_class_gaussians(forward(penultimate.trunk, clean.x), clean.y, num_classes)
        expert_space = fit_feature_space(split_before_classifier(models["expert"]), clean, num_classes)
        auxiliary_spaces = {role: fit_feature_space(split_before_classifier(models[role]), clean, num_classes)
                            for role in auxiliary_roles(graph_rules(ROLES))}
        layers = fit_layer_space(TappedFeatures(penultimate.trunk), clean, num_classes)
    bank_rows = np.random.default_rng(config.seed).choice(len(clean.y), size=min(BuildConfig.strip_bank_size, len(clean.y)), replace=False)
    parameters = sum(p.numel() for p in models["original"].parameters())
    description = {
        "name": "classifier",
        "normalization": {"mean": [0.0], "std": [1.0]},
        "source_model": {"spec": f"untrained:{config.arch}", "sha256": None},
        "build": {"untrained": True, "arch": config.arch, "width": config.width, "parameters": parameters,
                  "auxiliary_method": "both", "clean_samples": len(clean.y), "strip_bank_size": len(bank_rows),
                  "seed": config.seed, "shared_trunk": None,
                  "clean_row_digests": TensorSet(clean.x, clean.y).row_digests()},
        "models": {role: {"untrained": True} for role in ROLES},
    }
    artifacts = config.out / "artifacts"
    write_artifacts(artifacts, config.force, models=models, penultimate=penultimate, gaussians=gaussians,
                    expert_space=expert_space, auxiliary_spaces=auxiliary_spaces, layers=layers,
                    spectrum=fit_spectrum_gaussians(clean, num_classes),
                    direction=TriggerDirection.absent(gaussians.means.shape[1], num_classes,
                                                      "untrained networks: no target was looked for"),
                    example=clean.x[:2], check_x=splits["calib"].x[:64], bank=clean.x[bank_rows],
                    description=description, stack_networks=config.stack_networks)
    run_calibrate(CalibrateConfig(artifacts, config.out / "calib.npz"))
    case = {"untrained": True, "arch": config.arch, "width": config.width, "parameters_per_network": parameters, "input_shape": list(input_shape),
            "num_classes": num_classes, "manifest_sha256": sha256_file(artifacts / "manifest.json"),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}}
    (config.out / "case.json").write_text(json.dumps(case, indent=2))
    return case


def main() -> int:
    parser = argparse.ArgumentParser(prog="untrained_case", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--arch", default="resnet18", choices=sorted(ARCHITECTURES))
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stack-networks", action="store_true", help="as offline build --stack-networks")
    parser.add_argument("--force", action="store_true", help="replace OUT/artifacts if it exists")
    args = parser.parse_args()
    case = make_untrained_case(UntrainedCaseConfig(args.out, args.arch, args.width, args.dataset, seed=args.seed,
                                                   stack_networks=args.stack_networks, force=args.force))
    print(f"{args.out}: {case['parameters_per_network'] / 1e6:.2f}M parameters per network, untrained, calibrated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
