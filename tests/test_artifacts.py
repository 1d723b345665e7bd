"""The firewall refuses artifacts whose files do not match the manifest's sha256."""

from __future__ import annotations

import shutil

import pytest

from firewall.artifacts import load_artifacts
from firewall.errors import ArtifactError


def test_tampered_model_is_refused(tiny_artifacts, tmp_path):
    copy = shutil.copytree(tiny_artifacts, tmp_path / "art")
    with open(copy / "expert.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match="expert.onnx .*modified"):
        load_artifacts(copy)


def test_missing_file_is_refused(tiny_artifacts, tmp_path):
    copy = shutil.copytree(tiny_artifacts, tmp_path / "art")
    (copy / "strip_bank.npy").unlink()
    with pytest.raises(ArtifactError, match="strip_bank.npy is missing"):
        load_artifacts(copy)


def test_missing_manifest_says_what_to_run(tmp_path):
    with pytest.raises(ArtifactError, match="offline build"):
        load_artifacts(tmp_path)
