"""`offline bench`: the detection matrix, attacks x datasets x architectures x seeds.

Every cell is the whole red-team story in-process: poison, build, calibrate at 1% FPR,
evaluate. A cell whose eval.json exists is reused (pass --force to measure again from
scratch, --rebuild to keep the poisoned model and data and build again, with
--reuse-models around the build's own fine-tuned models, or --recalibrate to keep the
build and calibrate and evaluate it again), so an
interrupted matrix resumes where it stopped; with --records, a cell whose records were
kept is reused too, though runs/ be gone. --auxiliary X builds each cell's model once
more with M' made that way, beside the default build (offline/cells.py). The table in
docs/RESULTS.md is rendered from whatever cells exist (offline/results_table.py).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from firewall.artifacts import MANIFEST, SCHEMA_VERSION
from firewall.errors import UserError
from offline.build.identification_version import read_as_builds_now_do
from offline.build.pipeline import DEFAULT_AUXILIARY, BuildConfig, run_build
from offline.calibrate import CalibrateConfig, run_calibrate
from offline.cells import artifacts_dir, built_manifest, eval_path, keep_records
from offline.evaluate import EvaluateConfig, run_evaluate
from offline.poison import DEFAULT_EPOCHS, PoisonConfig, run_poison

# Poison settings per dataset that fit the matrix on 2 cores: shapes at width 8 and 20
# epochs takes about 4 minutes a cell instead of 25 at `offline poison`'s defaults.
# --width/--epochs override them; such cells are named for their settings.
POISON_SETTINGS = {"digits": {"width": 16}, "shapes": {"width": 8, "epochs": 20}}
QUICK = {"datasets": ("digits",), "archs": ("resnet",), "attacks": ("badnets", "none"), "seeds": (0,),
         "poison": {"width": 8, "epochs": 4, "clean_size": 200}}


@dataclass(frozen=True)
class BenchConfig:
    out: Path
    datasets: tuple[str, ...]
    archs: tuple[str, ...]
    attacks: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    quick: bool = False
    force: bool = False
    rebuild: bool = False
    reuse_models: bool = False  # with rebuild: each cell's fine-tuned models from its existing build
    recalibrate: bool = False  # a change to calibration or to the verdict's arithmetic, not to the build
    width: int | None = None
    epochs: int | None = None
    auxiliary: str | None = None  # None: the build's default, in artifacts/ and eval.json (offline/cells.py)
    records: Path | None = None  # where each cell's measurement records are kept too (offline/cells.py)

    def poison_settings(self, dataset: str) -> dict:
        if self.quick:
            return QUICK["poison"]
        overrides = {k: v for k, v in (("width", self.width), ("epochs", self.epochs)) if v is not None}
        return {**POISON_SETTINGS.get(dataset, {}), **overrides}

    def settings_tag(self, dataset: str) -> str:
        """'' for the matrix's own settings; '-w<width>e<epochs>' when --width or --epochs overrides them."""
        if self.quick or (self.width is None and self.epochs is None):
            return ""
        poison = self.poison_settings(dataset)
        width = poison.get("width", PoisonConfig.width)
        return f"-w{width}e{poison.get('epochs') or DEFAULT_EPOCHS[dataset]}"


def cell_dir(out: Path, dataset: str, attack: str, arch: str, seed: int, tag: str = "") -> Path:
    """runs/<dataset>-<attack>-<arch>[-w<width>e<epochs>][-s<seed>]: seed 0 matches scripts/run_case.sh."""
    return out / (f"{dataset}-{attack}-{arch}{tag}" + (f"-s{seed}" if seed else ""))


def run_cell(case: Path, dataset: str, attack: str, arch: str, seed: int, poison: dict, repoison: bool,
             auxiliary: str | None = None, reuse_models: bool = False) -> dict:
    eval_path(case, auxiliary).unlink(missing_ok=True)  # an interrupted build must not leave the last one's
    if repoison or not (case / "attack.json").is_file():
        run_poison(PoisonConfig(dataset=dataset, attack=attack, out=case, arch=arch, seed=seed, force=True,
                                **poison))
    artifacts = artifacts_dir(case, auxiliary)
    reuse = artifacts if reuse_models and (artifacts / MANIFEST).is_file() else None
    run_build(BuildConfig(model=str(case / "model.pt2"), clean_data=case / "clean.npz", out=artifacts,
                          auxiliary=auxiliary or DEFAULT_AUXILIARY, seed=seed, reuse_models=reuse, force=True))
    return calibrate_and_evaluate(case, attack, auxiliary)


def calibrate_and_evaluate(case: Path, attack: str, auxiliary: str | None = None) -> dict:
    artifacts = artifacts_dir(case, auxiliary)
    eval_path(case, auxiliary).unlink(missing_ok=True)  # nor an interrupted calibration
    run_calibrate(CalibrateConfig(artifacts, case / "calib.npz"))
    backdoor = None if attack == "none" else case / "test_triggered.npz"
    return run_evaluate(EvaluateConfig(artifacts, case / "test_clean.npz", backdoor,
                                       json_out=eval_path(case, auxiliary)))


def measured_already(case: Path, config: BenchConfig) -> bool:
    """A cell is reused only if it was evaluated after a build made the way this run would make it: a default
    build from before the default changed, or one of an older artifacts schema (which lacks a rule the
    current build has), is built again. Its records count as much as the cell itself, so a
    matrix whose runs/ is gone resumes from its committed records."""
    if config.force or config.rebuild:
        return False
    places = [case] + ([config.records / case.name] if config.records is not None else [])
    return any(eval_path(place, config.auxiliary).is_file() and _built_as_this_run_would(place, config)
               for place in places)


def recalibrates(case: Path, config: BenchConfig) -> bool:
    """--recalibrate applies to a cell whose build in runs/ is one this run would make; any other is built."""
    return config.recalibrate and not (config.force or config.rebuild) and _built_as_this_run_would(case, config)


def _built_as_this_run_would(place: Path, config: BenchConfig) -> bool:
    """The same schema and auxiliary method, and a build that looked for the backdoor's target as builds
    now do (the firewall serves one that did not, without the suspected-target rule's evidence)."""
    manifest = built_manifest(place, config.auxiliary)
    return (manifest is not None and manifest.get("schema_version") == SCHEMA_VERSION
            and manifest["build"]["auxiliary_method"] == (config.auxiliary or DEFAULT_AUXILIARY)
            and read_as_builds_now_do(manifest.get("target_identification")))


def run_bench(config: BenchConfig) -> tuple[list[Path], dict[str, str]]:
    """Measures every cell of the grid; returns the cells measured and, by name, why the others
    failed. A cell that fails (a build whose export check refuses it, say) is reported and the
    matrix goes on: one bad cell must not cost the hours of the cells after it."""
    cells = [(d, a, arch, s) for d in config.datasets for arch in config.archs for a in config.attacks
             for s in config.seeds]
    done, failed = [], {}
    for index, (dataset, attack, arch, seed) in enumerate(cells, 1):
        case = cell_dir(config.out, dataset, attack, arch, seed, config.settings_tag(dataset))
        label = f"[{index}/{len(cells)}] {case.name}{f' --auxiliary {config.auxiliary}' if config.auxiliary else ''}"
        recalibrate = recalibrates(case, config)
        if not recalibrate and measured_already(case, config):
            print(f"{label}: measured already, reused", file=sys.stderr, flush=True)
        else:
            started = time.monotonic()
            try:
                report = (calibrate_and_evaluate(case, attack, config.auxiliary) if recalibrate
                          else run_cell(case, dataset, attack, arch, seed, config.poison_settings(dataset),
                                        repoison=config.force, auxiliary=config.auxiliary,
                                        reuse_models=config.reuse_models))
            except UserError as error:
                failed[case.name] = str(error)
                print(f"{label}: failed, the matrix goes on: {error}", file=sys.stderr, flush=True)
                continue
            firewall = report["rules"]["firewall"]
            summary = (f"AUROC {firewall['auroc']:.4f}" if "auroc" in firewall
                       else f"FPR {firewall['threshold_fpr']:.4f}")
            print(f"{label}: firewall {summary} ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
        if config.records is not None:
            keep_records(case, config.records)
        done.append(case)
    config.out.mkdir(parents=True, exist_ok=True)  # every cell may have been reused from its records
    (config.out / "bench.json").write_text(json.dumps({"cells": [c.name for c in done], "failed": failed}, indent=2))
    return done, failed
