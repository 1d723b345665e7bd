"""Shared fixtures: one tiny poisoned model and its artifacts, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from offline.bench import QUICK
from offline.cli import main as offline


@pytest.fixture(scope="session")
def tiny_case(tmp_path_factory) -> Path:
    """A small ResNet trained briefly on digits with a BadNets backdoor: at the settings of
    `offline bench --quick`'s BadNets cell, which the bench test checks against it."""
    root = tmp_path_factory.mktemp("tiny")
    settings = QUICK["poison"]
    assert offline(["poison", "--dataset", "digits", "--attack", "badnets", "--out", str(root / "case"),
                    "--width", str(settings["width"]), "--epochs", str(settings["epochs"]),
                    "--clean-size", str(settings["clean_size"])]) == 0
    return root / "case"


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_case: Path) -> Path:
    out = tiny_case.parent / "artifacts"
    assert offline(["build", "--model", str(tiny_case / "model.pt2"), "--clean-data", str(tiny_case / "clean.npz"),
                    "--out", str(out)]) == 0
    assert offline(["calibrate", "--artifacts", str(out), "--clean-data", str(tiny_case / "calib.npz")]) == 0
    return out
