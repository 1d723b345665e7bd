"""`offline build --stack-networks`: B, the auxiliaries and E as one network of grouped
convolutions compute what the networks compute one after another, and a graph that
cannot be stacked is named and left as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from firewall.artifacts import INT8_FUSED_FILES, load_artifacts
from firewall.scoring import ScoringEngine
from offline.bench_engine import first_stages_agree
from offline.build.stacked_networks import SeparateNetworks, StackedNetworks, Unstackable, stack_graphs
from offline.build.trunk_split import split_before_classifier
from offline.cli import main as offline
from offline.model_io import export_program
from offline.models import create_model

SHAPE = (3, 16, 16)


def _networks(arch: str, count: int = 3, width: int = 8) -> list[torch.fx.GraphModule]:
    """Independent initialisations of one architecture, exported as the build's models are,
    with batch norm statistics that are not the identity."""
    example = torch.randn(4, *SHAPE)
    networks = []
    for seed in range(count):
        torch.manual_seed(seed)
        model = create_model(arch, SHAPE, 10, width)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        networks.append(export_program(model, example).module())
    return networks


@pytest.mark.parametrize("arch", ["resnet", "vgg", "mobilenet"])
def test_the_stacked_network_computes_each_networks_features_side_by_side(arch: str):
    trunks = [split_before_classifier(network).trunk for network in _networks(arch)]
    x = torch.randn(5, *SHAPE)
    with torch.no_grad():
        separate = torch.cat([trunk(x) for trunk in trunks], dim=1)
        stacked = stack_graphs(trunks)(x)
    assert stacked.shape == separate.shape
    assert torch.allclose(stacked, separate, rtol=1e-4, atol=1e-5)


def test_stacked_and_separate_networks_give_the_rules_the_same_inputs():
    expert, auxiliary, exposed = _networks("resnet")
    splits = [split_before_classifier(network) for network in (expert, auxiliary, exposed)]
    separate = SeparateNetworks(splits[0], [splits[1]], exposed)
    stacked = StackedNetworks(splits[0], [splits[1]], splits[2])
    x = torch.randn(7, *SHAPE)
    with torch.no_grad():
        for got, want in zip(stacked(x), separate(x)):
            for a, b in zip(got if isinstance(got, list) else [got], want if isinstance(want, list) else [want]):
                assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_vision_transformer_is_not_stacked_and_the_layer_that_stops_it_is_named():
    trunks = [split_before_classifier(network).trunk for network in _networks("vit", count=2)]
    with pytest.raises(Unstackable, match="not a layer known to act on each channel alone"):
        stack_graphs(trunks)


def test_networks_of_different_architectures_are_not_stacked():
    trunks = [split_before_classifier(network).trunk for network in (*_networks("resnet", 1), *_networks("vgg", 1))]
    with pytest.raises(Unstackable, match="differ"):
        stack_graphs(trunks)


@pytest.fixture(scope="module")
def stacked_artifacts(tiny_case: Path, tiny_artifacts: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stacked") / "artifacts"
    assert offline(["build", "--model", str(tiny_case / "model.pt2"), "--clean-data", str(tiny_case / "clean.npz"),
                    "--out", str(out), "--reuse-models", str(tiny_artifacts), "--stack-networks"]) == 0
    return out


def test_a_stacked_build_scores_as_the_build_it_was_made_from(tiny_case: Path, tiny_artifacts: Path,
                                                              stacked_artifacts: Path):
    manifest = json.loads((stacked_artifacts / "manifest.json").read_text())
    assert manifest["fused_networks"] == {"stacked": True, "networks": 4}
    assert json.loads((tiny_artifacts / "manifest.json").read_text())["fused_networks"]["stacked"] is False
    x = np.load(tiny_case / "test_triggered.npz")["x"][:64]
    assert first_stages_agree(*(ScoringEngine(load_artifacts(a)) for a in (tiny_artifacts, stacked_artifacts)), x,
                              rtol=1e-4, atol=1e-5)


def test_the_int8_copy_of_a_stacked_build_leaves_M_the_float_input(tiny_case: Path, stacked_artifacts: Path,
                                                                   tmp_path: Path):
    # the stacked networks' first convolution is the input's only quantized reader, and
    # onnxruntime would hand its quantized copy of the image to M's first layer too
    copy = tmp_path / "artifacts"
    shutil.copytree(stacked_artifacts, copy)
    assert offline(["quantize", "--artifacts", str(copy), "--clean-data", str(tiny_case / "clean.npz")]) == 0
    graph = onnx.load(copy / INT8_FUSED_FILES["fused"]).graph
    first_of_m = next(node for node in graph.node if node.op_type == "Conv"
                      and node.input[1].startswith("scorer.features."))
    assert first_of_m.input[0] == graph.input[0].name
    record = json.loads((copy / "manifest.json").read_text())["quantization"]
    assert record["agreement_on_calibration_rows"]["prediction_agreement"] == 1.0
