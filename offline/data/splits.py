"""The red-team splits: training, the defender's clean set, calibration and test."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from firewall.errors import UserError
from offline.data.digits import make_digits
from offline.data.shapes import make_shapes

DATASETS = ("digits", "shapes")
FRACTIONS = {"train": 0.55, "clean": 0.10, "calib": 0.15, "test": 0.20}


@dataclass(frozen=True)
class Split:
    x: np.ndarray
    y: np.ndarray


def load_dataset(name: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, group); rows of one group are variants of one original and never cross splits."""
    if name == "digits":
        return make_digits(seed=seed)
    if name == "shapes":
        x, y = make_shapes(12000, seed=seed)
        return x, y, np.arange(len(y))
    raise UserError(f"unknown dataset {name!r}; choose one of {DATASETS}")


def split_by_group(x: np.ndarray, y: np.ndarray, group: np.ndarray, clean_size: int,
                   rng: np.random.Generator) -> dict[str, Split]:
    groups = rng.permutation(np.unique(group))
    bounds = np.cumsum([0] + [int(f * len(groups)) for f in FRACTIONS.values()])
    bounds[-1] = len(groups)
    splits = {}
    for (name, _), lo, hi in zip(FRACTIONS.items(), bounds[:-1], bounds[1:]):
        rows = np.flatnonzero(np.isin(group, groups[lo:hi]))
        if name == "clean":
            if clean_size > len(rows):
                raise UserError(f"--clean-size {clean_size} exceeds the {len(rows)} clean rows available")
            rows = rng.choice(rows, size=clean_size, replace=False)
        rows = rng.permutation(rows)
        splits[name] = Split(x[rows], y[rows])
    return splits
