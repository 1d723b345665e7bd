"""Bad input: one line that says what is wrong, exit code 2, nothing half-written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from offline.cli import main as offline


def _build(tiny_case: Path, out: Path, clean: Path | None = None, model: Path | None = None) -> int:
    return offline(["build", "--model", str(model or tiny_case / "model.pt2"),
                    "--clean-data", str(clean or tiny_case / "clean.npz"), "--out", str(out), "--target-identification-steps", "0"])


def _assert_clean_failure(code: int, capsys, out: Path, words: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error:") and len(err.splitlines()) == 1 and words in err, err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.partial")]


def test_missing_model(tiny_case, tmp_path, capsys):
    _assert_clean_failure(_build(tiny_case, tmp_path / "a", model=tmp_path / "nope.pt2"), capsys, tmp_path / "a",
                          "not found")


def test_corrupt_model(tiny_case, tmp_path, capsys):
    bad = tmp_path / "bad.pt2"
    bad.write_bytes(b"this is not a zip archive")
    _assert_clean_failure(_build(tiny_case, tmp_path / "a", model=bad), capsys, tmp_path / "a", "not a .pt2")


@pytest.mark.parametrize("arrays, words", [
    ({"x": np.zeros((60, 1, 16, 16), np.float32)}, "no array 'y'"),
    ({"y": np.zeros(60, np.int64)}, "no array 'x'"),
    ({"x": np.zeros((60, 1, 8, 8), np.float32), "y": np.zeros(60, np.int64)}, "shape"),
    ({"x": np.zeros((60, 1, 16, 16), np.float32), "y": np.full(60, 10, np.int64)}, "classes"),
    ({"x": np.full((60, 1, 16, 16), np.nan, np.float32), "y": np.zeros(60, np.int64)}, "NaN"),
    ({"x": np.zeros((10, 1, 16, 16), np.float32), "y": np.zeros(10, np.int64)}, "at least"),
])
def test_malformed_clean_sets(tiny_case, tmp_path, capsys, arrays, words):
    clean = tmp_path / "clean.npz"
    np.savez(clean, **arrays)
    _assert_clean_failure(_build(tiny_case, tmp_path / "a", clean=clean), capsys, tmp_path / "a", words)


def test_clean_set_too_small_for_the_asked_fpr(tiny_case, tiny_artifacts, tmp_path, capsys):
    calib = np.load(tiny_case / "calib.npz")
    small = tmp_path / "small.npz"
    np.savez(small, x=calib["x"][:50], y=calib["y"][:50])
    before = (tiny_artifacts / "thresholds.json").read_bytes()
    code = offline(["calibrate", "--artifacts", str(tiny_artifacts), "--clean-data", str(small), "--target-fpr", "0.01"])
    err = capsys.readouterr().err
    assert code == 2 and "at least 100" in err
    assert (tiny_artifacts / "thresholds.json").read_bytes() == before


def test_existing_output_is_not_overwritten_without_force(tiny_case, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _build(tiny_case, out) == 2
    assert "--force" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
