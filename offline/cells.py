"""Where a bench cell keeps each build of its one poisoned model.

Builds of a cell differ only in how M' is made (`offline build --auxiliary`), so they share
the poisoned model and its data and sit side by side in the cell: `artifacts/` and
`eval.json` for a build at the defaults, `artifacts-<auxiliary>/` and
`eval-<auxiliary>.json` for a build asked for by name. The default results never move, and
a variant is compared with them on exactly the same model.
"""

from __future__ import annotations

from pathlib import Path


def artifacts_dir(case: Path, auxiliary: str | None = None) -> Path:
    return case / ("artifacts" if auxiliary is None else f"artifacts-{auxiliary}")


def eval_path(case: Path, auxiliary: str | None = None) -> Path:
    return case / ("eval.json" if auxiliary is None else f"eval-{auxiliary}.json")


def built_variants(case: Path) -> list[str]:
    """The named builds (`--auxiliary X`) that a cell holds an evaluation of."""
    return sorted(p.stem.removeprefix("eval-") for p in case.glob("eval-*.json"))
