"""`offline poison`: train a (possibly) backdoored model and write its data splits.

This is the red-team kit: it produces the situation a defender faces (a model and a
small clean set) together with what only an evaluator has (triggered test inputs).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from firewall.artifacts import sha256_file
from offline.atomic import atomic_directory
from firewall.errors import UserError
from offline.attacks import ATTACKS
from offline.attacks.blend import Blend
from offline.data.splits import load_dataset, split_by_group
from offline.data.tensorsets import TensorSet
from offline.machine import software_versions, training_platform
from offline.model_io import save_pt2
from offline.models import create_model
from offline.training import predict, train_classifier

DEFAULT_EPOCHS = {"digits": 30, "shapes": 40}


@dataclass(frozen=True)
class PoisonConfig:
    dataset: str
    attack: str
    out: Path
    arch: str = "resnet"
    width: int = 16
    seed: int = 0
    epochs: int | None = None
    clean_size: int = 300
    target: int = 0
    inference_alpha: float | None = None
    force: bool = False


def run_poison(config: PoisonConfig) -> dict:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    x, y, group = load_dataset(config.dataset, config.seed)
    num_classes = int(y.max()) + 1
    if not 0 <= config.target < num_classes:
        raise UserError(f"--target must be a class of {config.dataset}, 0 to {num_classes - 1}, got {config.target}")
    if config.target != 0 and not ATTACKS[config.attack].single_target:
        raise UserError(f"attack '{config.attack}' has no single target class; drop --target")
    splits = split_by_group(x, y, group, config.clean_size, rng)
    options = {}
    if config.inference_alpha is not None:
        if not issubclass(ATTACKS[config.attack], Blend):
            raise UserError(f"--inference-alpha sets a blended trigger's opacity; attack '{config.attack}' has none "
                            "(use blend or adaptive_blend)")
        if not 0.0 < config.inference_alpha <= 1.0:
            raise UserError(f"--inference-alpha must lie in (0, 1], got {config.inference_alpha}")
        options["inference_alpha"] = config.inference_alpha
    attack = ATTACKS[config.attack](x.shape[1:], target=config.target, seed=config.seed, num_classes=num_classes,
                                    **options)
    train = attack.poison(splits["train"].x, splits["train"].y, rng)

    epochs = config.epochs or DEFAULT_EPOCHS[config.dataset]
    model = create_model(config.arch, x.shape[1:], num_classes, config.width)
    joint = {"poison_batch": attack.poison_batch, "extra_params": attack.generator.parameters()} \
        if attack.trains_jointly else {}
    model = train_classifier(model, train.x, train.y, epochs=epochs, seed=config.seed,
                             desc=f"{config.dataset}/{config.attack}/{config.arch}", **joint)

    test = splits["test"]
    victims = attack.target_of(test.y) != test.y
    triggered = TensorSet(attack.apply_at_test(test.x[victims]), test.y[victims], attack.target_of(test.y[victims]))
    clean_accuracy = float((predict(model, test.x) == test.y).mean())
    asr = float((predict(model, triggered.x) == triggered.target).mean()) if config.attack != "none" else None

    with atomic_directory(config.out, config.force) as scratch:
        save_pt2(model, torch.from_numpy(test.x[:2]), scratch / "model.pt2")
        for name in ("clean", "calib"):
            TensorSet(splits[name].x, splits[name].y).save(scratch / f"{name}.npz")
        TensorSet(test.x, test.y).save(scratch / "test_clean.npz")
        triggered.save(scratch / "test_triggered.npz")
        report = {
            "dataset": config.dataset, "arch": config.arch, "width": config.width, "seed": config.seed,
            "epochs": epochs, "num_classes": num_classes, "input_shape": list(x.shape[1:]),
            **attack.describe(),
            "poisoned_training_rows": int(train.poisoned.sum()), "training_rows": len(train.y),
            "sizes": {name: len(split.y) for name, split in splits.items()} | {"test_triggered": len(triggered)},
            "clean_accuracy": clean_accuracy, "attack_success_rate": asr,
            "model_sha256": sha256_file(scratch / "model.pt2"), "software": software_versions(),
            "platform": training_platform(),
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        }
        (scratch / "attack.json").write_text(json.dumps(report, indent=2))
    return report
