"""`offline quantize` and `offline calibrate --precision int8`: int8 copies of the fused
first stage that the firewall serves only when its thresholds were fitted on them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from firewall.artifacts import INT8_FUSED_FILES, THRESHOLDS, load_artifacts
from firewall.errors import ArtifactError
from firewall.rules import graph_rules
from firewall.scoring import ScoringEngine
from firewall.thresholds import Thresholds
from offline.build.quantize import quantizable_nodes
from offline.cli import main as offline


@pytest.fixture(scope="module")
def quantized(tiny_case: Path, tiny_artifacts: Path, tmp_path_factory) -> Path:
    art = shutil.copytree(tiny_artifacts, tmp_path_factory.mktemp("quantized") / "art")
    assert offline(["quantize", "--artifacts", str(art), "--clean-data", str(tiny_case / "clean.npz")]) == 0
    return art


def _first_stage(art: Path, precision: str, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    loaded = load_artifacts(art)
    return ScoringEngine(loaded, rules=graph_rules(loaded.model_roles), precision=precision).score(x)


def test_quantizing_adds_int8_graphs_that_the_manifest_pins(quantized):
    manifest = load_artifacts(quantized).manifest  # verifies every listed file's sha256
    assert set(INT8_FUSED_FILES.values()) <= set(manifest.files)
    record = manifest.raw["quantization"]
    assert all(nodes > 0 for nodes in record["nodes_quantized"].values())
    assert record["agreement_on_calibration_rows"]["prediction_agreement"] == 1.0


def test_only_the_layers_of_B_M_prime_and_E_are_quantized_and_M_reads_float_tensors(quantized):
    graph = onnx.load(quantized / INT8_FUSED_FILES["fused"]).graph
    dequantized = {out for node in graph.node if node.op_type == "DequantizeLinear" for out in node.output}
    layers = [node for node in graph.node if node.op_type in ("Conv", "Gemm")]
    of_m = [node for node in layers if node.input[1].startswith(("scorer.features.", "classifier."))]
    assert of_m and not any(name in dequantized for node in of_m for name in node.input)
    of_expert = [node for node in layers if node.input[1].startswith("scorer.networks.expert.")]
    assert of_expert and all(node.input[0] in dequantized and node.input[1] in dequantized for node in of_expert)


def test_the_int8_first_stage_predicts_exactly_what_M_predicts(tiny_case, quantized):
    x = np.load(tiny_case / "test_clean.npz")["x"][:300]
    assert np.array_equal(_first_stage(quantized, "fp32", x)[0], _first_stage(quantized, "int8", x)[0])


def test_int8_scores_follow_the_float_ones_and_Ms_own_rules_are_unchanged(tiny_case, quantized):
    x = np.load(tiny_case / "test_clean.npz")["x"][:300]
    (_, fp32), (_, int8) = _first_stage(quantized, "fp32", x), _first_stage(quantized, "int8", x)
    of_m = {"mahalanobis", "layer_mahalanobis", "spectrum_mahalanobis", "trigger_direction"}  # M's layers, or the input
    for rule in of_m:
        np.testing.assert_allclose(int8[rule], fp32[rule], rtol=1e-4, atol=1e-4)
    for rule in set(fp32) - of_m:
        assert not np.array_equal(fp32[rule], int8[rule]), rule
        assert np.corrcoef(fp32[rule], int8[rule])[0, 1] > 0.9, rule


def test_calibrating_on_the_int8_graph_records_it_for_the_sidecar(tiny_case, quantized, tmp_path):
    art = shutil.copytree(quantized, tmp_path / "art")
    assert offline(["calibrate", "--artifacts", str(art), "--clean-data", str(tiny_case / "calib.npz"),
                    "--precision", "int8"]) == 0
    thresholds = Thresholds.load(art / THRESHOLDS)
    assert thresholds.precision == "int8"
    assert json.loads((art / THRESHOLDS).read_text())["precision"] == "int8"
    assert offline(["evaluate", "--artifacts", str(art), "--clean-data", str(tiny_case / "test_clean.npz"),
                    "--backdoor-data", str(tiny_case / "test_triggered.npz"), "--json", str(tmp_path / "e.json")]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["rules"]["firewall"]["threshold_fpr"] < 0.05


def test_int8_needs_the_int8_graphs_and_says_how_to_make_them(tiny_case, tiny_artifacts, tmp_path, capsys):
    art = shutil.copytree(tiny_artifacts, tmp_path / "art")
    assert offline(["calibrate", "--artifacts", str(art), "--clean-data", str(tiny_case / "calib.npz"),
                    "--precision", "int8"]) != 0
    assert "offline quantize" in capsys.readouterr().err
    with pytest.raises(ArtifactError, match="no int8 graphs"):
        ScoringEngine(load_artifacts(art), precision="int8").score(np.load(tiny_case / "calib.npz")["x"][:2])


def test_quantizing_again_needs_force(tiny_case, quantized, capsys):
    args = ["quantize", "--artifacts", str(quantized), "--clean-data", str(tiny_case / "clean.npz")]
    assert offline(args) != 0
    assert "--force" in capsys.readouterr().err


def test_thresholds_written_before_int8_serving_are_float(tmp_path):
    path = tmp_path / THRESHOLDS
    path.write_text(json.dumps({"target_fpr": 0.01, "rules": {"badexpert": {"threshold": 0.5, "fpr": 0.01, "n": 100}}}))
    assert Thresholds.load(path).precision == "fp32"


def test_no_network_of_m_is_picked_for_quantization():
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", w], [f"y{i}"], name=f"conv{i}") for i, w in enumerate(
            ("scorer.features.stem.weight", "scorer.networks.expert.stem.weight", "auxiliaries.0.stem.weight",
             "networks.stacked.stacked_0", "classifier.fc.weight"))],
        "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])], [],
        [onnx.helper.make_tensor(w, onnx.TensorProto.FLOAT, [1], [1.0]) for w in
         ("scorer.features.stem.weight", "scorer.networks.expert.stem.weight", "auxiliaries.0.stem.weight",
          "networks.stacked.stacked_0", "classifier.fc.weight")])
    assert quantizable_nodes(onnx.helper.make_model(graph)) == ["conv1", "conv2", "conv3"]
