"""Where a bench cell keeps each build of its one poisoned model.

Builds of a cell differ only in how M' is made (`offline build --auxiliary`), so they share
the poisoned model and its data and sit side by side in the cell: `artifacts/` and
`eval.json` for a build at the defaults, `artifacts-<auxiliary>/` and
`eval-<auxiliary>.json` for a build asked for by name. A named build never touches the
default's files, and is compared with them on exactly the same model. What "the defaults"
were is whatever the build's default was when the cell was built; its manifest says.

A cell's measurement records (attack.json, the eval*.json and each build's manifest: tens of
KB) are all that the results document and a resumed bench read. `keep_records` copies them
into a records directory laid out like the runs directory, one that is committed, so the
matrix outlives runs/ (models and data, ignored by git and lost with the checkout) and
grows session by session.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from firewall.artifacts import MANIFEST


def artifacts_dir(case: Path, auxiliary: str | None = None) -> Path:
    return case / ("artifacts" if auxiliary is None else f"artifacts-{auxiliary}")


def eval_path(case: Path, auxiliary: str | None = None) -> Path:
    return case / ("eval.json" if auxiliary is None else f"eval-{auxiliary}.json")


def built_variants(case: Path) -> list[str]:
    """The named builds (`--auxiliary X`) that a cell holds an evaluation of."""
    return sorted(p.stem.removeprefix("eval-") for p in case.glob("eval-*.json"))


def built_manifest(case: Path, auxiliary: str | None = None) -> dict | None:
    """The manifest of the cell's build (how it was built), or None where there is no build."""
    manifest = artifacts_dir(case, auxiliary) / MANIFEST
    return json.loads(manifest.read_text()) if manifest.is_file() else None


def record_files(case: Path) -> list[Path]:
    """What the results document and a resumed bench read from a cell, relative to it: how it was poisoned, every
    evaluation of it, and the manifest of every build (what it was built with, the settings' evidence)."""
    builds = [None, *built_variants(case)]
    files = [case / "attack.json", *(path for build in builds
                                     for path in (eval_path(case, build), artifacts_dir(case, build) / MANIFEST))]
    return [p.relative_to(case) for p in files if p.is_file()]


def keep_records(case: Path, records: Path) -> Path:
    """Copy a cell's measurement records to records/<cell>/, laid out as in the cell; each file is replaced
    whole, never left half-written, and records of a cell poisoned anew (another model) are not mixed with the
    new ones."""
    kept, model = records / case.name, _model_sha256(case)
    if model is not None and _model_sha256(kept) not in (None, model):  # records of another model: start afresh
        shutil.rmtree(kept)
    for name in record_files(case):
        target = kept / name
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        shutil.copyfile(case / name, partial)
        os.replace(partial, target)
    return kept


def _model_sha256(case: Path) -> str | None:
    attack = case / "attack.json"
    return json.loads(attack.read_text())["model_sha256"] if attack.is_file() else None
