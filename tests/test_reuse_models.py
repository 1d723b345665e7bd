"""`offline build --reuse-models`: the graphs built again around an earlier build's fine-tuned
models score as that build did, and models that do not belong to this build are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from firewall.artifacts import load_artifacts
from firewall.scoring import ScoringEngine
from offline.bench_engine import first_stages_agree
from offline.cli import main as offline
from offline.data.tensorsets import TensorSet, load_tensor_set
from offline.model_io import load_pt2, save_pt2


def _build(tiny_case: Path, out: Path, *extra: str, model: Path | None = None, clean: Path | None = None) -> int:
    return offline(["build", "--model", str(model or tiny_case / "model.pt2"),
                    "--clean-data", str(clean or tiny_case / "clean.npz"), "--out", str(out), *extra])


def test_a_build_on_the_fine_tuned_models_of_another_scores_as_that_build(tiny_case: Path, tiny_artifacts: Path,
                                                                         tmp_path: Path):
    assert _build(tiny_case, tmp_path / "again", "--reuse-models", str(tiny_artifacts)) == 0
    x = np.load(tiny_case / "test_triggered.npz")["x"][:64]
    assert first_stages_agree(*(ScoringEngine(load_artifacts(a)) for a in (tiny_artifacts, tmp_path / "again")), x,
                              rtol=1e-4, atol=1e-5)
    manifest = load_artifacts(tmp_path / "again").manifest.raw
    assert manifest["build"]["fine_tuned_models_from"]["artifacts"] == str(tiny_artifacts)
    for role in ("expert", "exposed", "auxiliary", "auxiliary_tsbd"):
        recorded = json.loads((tiny_artifacts / "manifest.json").read_text())["models"][role]
        assert manifest["models"][role] == {**recorded, "reused": True}
    found = json.loads((tiny_artifacts / "manifest.json").read_text())["target_identification"]
    assert manifest["target_identification"] == {**found, "reused": True}  # M and the clean rows are the same
    assert manifest["files"]["reversed_trigger.npz"] == json.loads(  # and so is the trigger it reached the target by
        (tiny_artifacts / "manifest.json").read_text())["files"]["reversed_trigger.npz"]


def test_models_fine_tuned_on_other_clean_rows_are_refused(tiny_case: Path, tiny_artifacts: Path, tmp_path: Path,
                                                           capsys):
    clean = load_tensor_set(tiny_case / "clean.npz")
    TensorSet(clean.x[:-10], clean.y[:-10]).save(tmp_path / "fewer.npz")
    assert _build(tiny_case, tmp_path / "out", "--reuse-models", str(tiny_artifacts), clean=tmp_path / "fewer.npz") != 0
    assert "other clean rows" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_models_fine_tuned_from_another_model_are_refused(tiny_case: Path, tiny_artifacts: Path, tmp_path: Path,
                                                         capsys):
    other = load_pt2(tiny_case / "model.pt2").module()
    with torch.no_grad():
        next(other.parameters()).add_(0.5)
    save_pt2(other, torch.from_numpy(np.load(tiny_case / "clean.npz")["x"][:2]), tmp_path / "other.pt2")
    assert _build(tiny_case, tmp_path / "out", "--reuse-models", str(tiny_artifacts), model=tmp_path / "other.pt2") != 0
    assert "belong to another model" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (("--shared-trunk", "0.5", "--auxiliary", "finetune"), "do not combine"),
    (("--auxiliary", "finetune"), "built with --auxiliary both"),
])
def test_a_build_made_another_way_cannot_take_the_models(tiny_case: Path, tiny_artifacts: Path, tmp_path: Path,
                                                         capsys, extra: tuple[str, ...], message: str):
    assert _build(tiny_case, tmp_path / "out", "--reuse-models", str(tiny_artifacts), *extra) != 0
    assert message in capsys.readouterr().err


def test_the_matrix_reuses_fine_tuned_models_only_when_it_builds_again(tmp_path: Path, capsys):
    assert offline(["bench", "--quick", "--reuse-models", "--out", str(tmp_path)]) != 0
    assert "add --rebuild" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_an_expert_chosen_by_the_earlier_first_check_rule_is_not_reused(tiny_case: Path, tiny_artifacts: Path,
                                                                       tmp_path: Path, capsys):
    earlier = tmp_path / "earlier"
    shutil.copytree(tiny_artifacts, earlier)
    manifest = json.loads((earlier / "manifest.json").read_text())
    expert = manifest["models"]["expert"]
    expert.update(stopped_by="criterion", steps=5)  # as the pre-session-44 rule could choose, and did twice
    for run in expert["selection"]["search"]:
        del run["met_at_first_check"]
    (earlier / "manifest.json").write_text(json.dumps(manifest))
    assert _build(tiny_case, tmp_path / "out", "--reuse-models", str(earlier)) != 0
    assert "first check" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
