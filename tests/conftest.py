"""Shared fixtures: one tiny poisoned model and its artifacts, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from offline.cli import main as offline


@pytest.fixture(scope="session")
def tiny_case(tmp_path_factory) -> Path:
    """A small ResNet trained briefly on digits with a BadNets backdoor."""
    root = tmp_path_factory.mktemp("tiny")
    assert offline(["poison", "--dataset", "digits", "--attack", "badnets", "--out", str(root / "case"),
                    "--width", "8", "--epochs", "4", "--clean-size", "200"]) == 0
    return root / "case"


@pytest.fixture(scope="session")
def tiny_artifacts(tiny_case: Path) -> Path:
    out = tiny_case.parent / "artifacts"
    assert offline(["build", "--model", str(tiny_case / "model.pt2"), "--clean-data", str(tiny_case / "clean.npz"),
                    "--out", str(out)]) == 0
    assert offline(["calibrate", "--artifacts", str(out), "--clean-data", str(tiny_case / "calib.npz")]) == 0
    return out
