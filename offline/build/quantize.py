"""int8 copies of the fused first-stage graphs, for serving on CPUs (`offline quantize`).

At batch 64 the fused graph is compute-bound on its convolutions (95-97% of its time), so
the one lever left on a CPU is their precision. Quantized here: the convolutions and
fully connected layers of B, each M' and E, as QDQ with per-channel int8 weights and
uint8 activations whose ranges are read off clean inputs. Left in float:
- M's layers, so that the class the firewall scores is exactly the class the model
  predicts (an int8 M could disagree on a borderline input, and the firewall would then
  score a class the upstream did not answer);
- the score arithmetic (softmaxes, the triangle, the class Gaussians): quantizing every
  operator made BaDExpert's output constant (docs/PERFORMANCE_NOTES.md, session 6).
The thresholds are fitted on the graph they will serve: `offline calibrate --precision
int8` scores with these copies, and thresholds.json records which graph it was fitted on.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from firewall.artifacts import (FUSED_FILES, INT8_FUSED_FILES, MANIFEST, THRESHOLDS, Artifacts, Manifest,
                                load_artifacts, sha256_file, write_json_atomically)
from firewall.errors import UserError
from firewall.rules import graph_rules
from firewall.scoring import ScoringEngine
from firewall.thresholds import Thresholds
from offline.data.tensorsets import load_tensor_set

QUANTIZED_OPS = ("Conv", "Gemm")
# M's layers, by the prefix their weights carry in the fused graphs (with the predicting
# graph's `scorer.` before it): its feature layers and its classifier, and the trigger
# direction's map of M's features (a fully connected layer too, which the quantizer would feed
# a quantized copy of the features M's classifier reads). Every other convolution and fully
# connected layer is B's, an M''s or E's, stacked or not.
FLOAT_NETWORKS = ("features.", "classifier.", "trigger_direction.")
CALIBRATION_BATCH = 64


@dataclass(frozen=True)
class QuantizeConfig:
    artifacts: Path
    clean_data: Path  # the inputs whose activations set the int8 ranges: the build's clean set
    force: bool = False


def quantizable_nodes(model: onnx.ModelProto) -> list[str]:
    """The convolutions and fully connected layers whose weights belong to B, an M' or E:
    all but M's."""
    weights = {init.name for init in model.graph.initializer}
    return [node.name for node in model.graph.node
            if node.op_type in QUANTIZED_OPS and len(node.input) > 1 and node.input[1] in weights
            and not node.input[1].removeprefix("scorer.").startswith(FLOAT_NETWORKS)]


class _CleanBatches(CalibrationDataReader):
    """The clean inputs in batches, for onnxruntime to read the activations' ranges off."""

    def __init__(self, input_name: str, x: np.ndarray):
        self._feeds = iter([{input_name: np.ascontiguousarray(x[i : i + CALIBRATION_BATCH], np.float32)}
                            for i in range(0, len(x), CALIBRATION_BATCH)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_graph(source: Path, target: Path, input_name: str, x: np.ndarray) -> int:
    """Writes the int8 copy of `source` to `target`; returns how many nodes it quantized."""
    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        nodes = quantizable_nodes(onnx.load(prepared))
        if not nodes:
            raise UserError(f"{source.name} has no convolution or fully connected layer of B, M' or E to quantize")
        quantize_static(str(prepared), str(target), _CleanBatches(input_name, x), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(QUANTIZED_OPS), nodes_to_quantize=nodes, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"DedicatedQDQPair": True})
    model = onnx.load(target)
    if _float_input_restored(model, input_name, set(nodes)):
        onnx.save(model, target)
    return len(nodes)


def _float_input_restored(model: onnx.ModelProto, input_name: str, quantized: set[str]) -> bool:
    """Points the layers left in float back at the float input where the quantizer gave them
    its quantized copy; True where it had to.

    onnxruntime gives each quantized reader of a tensor a Q/DQ pair of its own
    (DedicatedQDQPair), but where only one reader is quantized (the stacked networks' first
    convolution) the pair replaces the tensor for every reader, M's first layer and the
    spectrum rule included: M then sees a quantized image and its prediction can change
    (7 of 2,153 inputs on shapes/VGG WaNet).
    """
    producers = {output: node for node in model.graph.node for output in node.output}

    def quantized_input(name: str) -> bool:
        dequantize = producers.get(name)
        quantize = producers.get(dequantize.input[0]) if dequantize and dequantize.op_type == "DequantizeLinear" else None
        return quantize is not None and quantize.op_type == "QuantizeLinear" and quantize.input[0] == input_name

    restored = False
    for node in model.graph.node:
        if node.name in quantized or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            if quantized_input(name):
                node.input[i], restored = input_name, True
    return restored


def _agreement(artifacts: Artifacts, x: np.ndarray) -> dict:
    """How close the int8 first stage's scores are to the float graph's on the clean inputs."""
    rules = graph_rules(artifacts.model_roles)
    (yhat, fp32), (yhat_int8, int8) = (ScoringEngine(artifacts, rules=rules, precision=p).score(x)
                                       for p in ("fp32", "int8"))
    return {"prediction_agreement": float((yhat == yhat_int8).mean()),
            "score_correlation": {rule: float(np.corrcoef(fp32[rule], int8[rule])[0, 1]) for rule in rules}}


def run_quantize(config: QuantizeConfig) -> dict:
    """Adds the int8 graphs to the artifacts and lists them, with what was done, in the manifest."""
    artifacts = load_artifacts(config.artifacts)
    manifest = artifacts.manifest
    if any(name in manifest.files for name in INT8_FUSED_FILES.values()) and not config.force:
        raise UserError(f"{config.artifacts} already has int8 graphs: pass --force to quantize them again")
    clean = load_tensor_set(config.clean_data, num_classes=manifest.num_classes, input_shape=manifest.input_shape)
    quantized = {}
    for role, filename in INT8_FUSED_FILES.items():
        quantized[filename] = quantize_graph(artifacts.path(FUSED_FILES[role]), artifacts.path(filename),
                                             manifest.input_name, clean.x)
    data = dict(manifest.raw)
    data["files"] = {**data["files"], **{f: {"sha256": sha256_file(artifacts.path(f))} for f in INT8_FUSED_FILES.values()}}
    data["quantization"] = {"format": "QDQ, per-channel int8 weights, uint8 activations",
                            "ops": list(QUANTIZED_OPS), "float": [n.rstrip(".") for n in FLOAT_NETWORKS],
                            "nodes_quantized": quantized, "calibration_rows": len(clean),
                            "calibration_row_digests": clean.row_digests()}
    # the graphs were written just now: the engine may open them before the manifest on disk lists them
    quantized_set = Artifacts(artifacts.root, Manifest.from_json(data), artifacts.manifest_sha256)
    data["quantization"]["agreement_on_calibration_rows"] = _agreement(quantized_set, clean.x)
    write_json_atomically(artifacts.path(MANIFEST), data)
    _warn_if_thresholds_are_stale(artifacts.path(THRESHOLDS))
    return data["quantization"]


def _warn_if_thresholds_are_stale(path: Path) -> None:
    if path.is_file() and Thresholds.load(path).precision == "int8":
        print(f"warning: {path} was fitted on the int8 graphs just replaced: run `offline calibrate --precision "
              "int8` again", file=sys.stderr)
