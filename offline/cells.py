"""Where a bench cell keeps each build of its one poisoned model.

Builds of a cell differ only in how M' is made (`offline build --auxiliary`), so they share
the poisoned model and its data and sit side by side in the cell: `artifacts/` and
`eval.json` for a build at the defaults, `artifacts-<auxiliary>/` and
`eval-<auxiliary>.json` for a build asked for by name. A named build never touches the
default's files, and is compared with them on exactly the same model. What "the defaults"
were is whatever the build's default was when the cell was built; its manifest says.
"""

from __future__ import annotations

import json
from pathlib import Path

from firewall.artifacts import MANIFEST


def artifacts_dir(case: Path, auxiliary: str | None = None) -> Path:
    return case / ("artifacts" if auxiliary is None else f"artifacts-{auxiliary}")


def eval_path(case: Path, auxiliary: str | None = None) -> Path:
    return case / ("eval.json" if auxiliary is None else f"eval-{auxiliary}.json")


def built_variants(case: Path) -> list[str]:
    """The named builds (`--auxiliary X`) that a cell holds an evaluation of."""
    return sorted(p.stem.removeprefix("eval-") for p in case.glob("eval-*.json"))


def built_auxiliary(case: Path, auxiliary: str | None = None) -> str | None:
    """How M' was made in the cell's build (its manifest's record), or None where there is no build."""
    manifest = artifacts_dir(case, auxiliary) / MANIFEST
    return json.loads(manifest.read_text())["build"]["auxiliary_method"] if manifest.is_file() else None
