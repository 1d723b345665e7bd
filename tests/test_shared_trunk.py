"""The shared-trunk build: the fine-tunes change only a head, and the fused graph runs the trunk once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from firewall.artifacts import load_artifacts
from firewall.errors import UserError
from offline.build.pipeline import BuildConfig, run_build
from offline.build.trunk_split import Composed, split_trunk
from offline.cli import main as offline
from offline.model_io import load_pt2
from offline.models import create_model


def exported(arch: str) -> torch.fx.GraphModule:
    torch.manual_seed(0)
    model = create_model(arch, (3, 16, 16), 5, width=8).eval()
    batch = torch.export.Dim("batch", min=1)
    return torch.export.export(model, (torch.randn(2, 3, 16, 16),), dynamic_shapes=({0: batch},)).module()


@pytest.mark.parametrize("arch", ["resnet", "vgg", "mobilenet"])
def test_trunk_then_head_is_the_model_again(arch: str):
    model = exported(arch)
    split = split_trunk(model, 0.5)
    x = torch.randn(4, 3, 16, 16)
    assert torch.equal(Composed(split.trunk, split.head)(x), model(x))
    assert split.head_parameters + split.trunk_parameters == sum(p.numel() for p in model.parameters())


def test_the_cut_is_the_latest_that_leaves_the_head_its_share():
    model = exported("vgg")
    total = sum(p.numel() for p in model.parameters())
    thin, thick = split_trunk(model, 0.5), split_trunk(model, 0.9)
    assert thin.head_parameters >= 0.5 * total and thick.head_parameters >= 0.9 * total
    assert thin.trunk_parameters > thick.trunk_parameters
    with pytest.raises(ValueError, match="no point in the graph"):
        split_trunk(model, 1.0)


def count_convs(path: Path) -> int:
    return sum(node.op_type == "Conv" for node in onnx.load(str(path)).graph.node)


def test_a_shared_trunk_build_fine_tunes_heads_only_and_runs_the_trunk_once(tiny_case: Path, tmp_path: Path):
    out = tmp_path / "shared"
    assert offline(["build", "--model", str(tiny_case / "model.pt2"), "--clean-data", str(tiny_case / "clean.npz"),
                    "--out", str(out), "--auxiliary", "finetune", "--shared-trunk", "0.9", "--target-identification-steps", "0"]) == 0
    artifacts = load_artifacts(out)
    recorded = artifacts.manifest.raw["build"]["shared_trunk"]
    assert recorded["head_share"] == 0.9 and recorded["trunk_parameters"] > 0

    models = {role: load_pt2(out / "torch" / f"{role}.pt2").module() for role in ("original", "expert", "exposed")}
    x = torch.from_numpy(np.load(tiny_case / "calib.npz")["x"][:16])
    trunk = split_trunk(models["original"], 0.9).trunk
    for role in ("expert", "exposed"):  # M's trunk, untouched by the fine-tunes; the heads moved
        assert torch.equal(split_trunk(models[role], 0.9).trunk(x), trunk(x))
        assert not torch.equal(models[role](x), models["original"](x))

    trunk_convs = sum(n.target == torch.ops.aten.conv2d.default for n in trunk.graph.nodes)
    head_convs = count_convs(out / "original.onnx") - trunk_convs
    assert trunk_convs > 0
    assert count_convs(out / "fused.onnx") == trunk_convs + 4 * head_convs  # the trunk once, four heads


def test_a_shared_trunk_refuses_what_it_cannot_keep(tiny_case: Path, tmp_path: Path):
    base = {"model": str(tiny_case / "model.pt2"), "clean_data": tiny_case / "clean.npz", "out": tmp_path / "x"}
    with pytest.raises(UserError, match="do not combine"):
        run_build(BuildConfig(**base, auxiliary="tsbd", shared_trunk=0.5))
    with pytest.raises(UserError, match=r"in \(0, 1\)"):
        run_build(BuildConfig(**base, shared_trunk=1.5))
