"""ONNX export with a dynamic batch dimension, checked against torch on real inputs."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnxscript import ir
from torch import nn

from firewall.errors import UserError

INPUT_NAME, OUTPUT_NAME = "input", "logits"
# A wrong translation is off by order one; float32 rounding is off by parts in 1e7 of the
# values it rounds, and an exposed model's logits reach the thousands (ascent on the clean
# loss: 1,764 on a shapes/VGG cell, where 2 float32 steps are 2.4e-4). So the bound is
# relative to the scale of each input's outputs, and absolute below 1.
MAX_RELATIVE_DIFF = 1e-4


def relative_difference(got: np.ndarray, want: np.ndarray) -> float:
    """The largest |got - want| of each input's outputs over max(1, their largest |want|), at worst over the inputs.

    Relative to the input's largest output rather than to each value, because one input's
    outputs share the rounding of the activations that feed them all: an exposed model's
    logit of 2.26 beside one of 5,514 is off by 6.4e-4 in float32, parts in 1e7 of 5,514 but
    2.8e-4 of 2.26, and per value that refused a sound build (shapes/ResNet blend seed 1,
    session 46). A wrong translation is off by order one of the input's scale either way."""
    got, want = (np.asarray(a, np.float64).reshape(len(want), -1) for a in (got, want))
    return float((np.abs(got - want).max(axis=1) / np.maximum(1.0, np.abs(want).max(axis=1))).max())


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path,
                output_names: list[str] | tuple[str, ...] = (OUTPUT_NAME,)) -> None:
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamic_shapes=({0: batch},), input_names=[INPUT_NAME],
                                    output_names=list(output_names), dynamo=True, verbose=False)
    _drop_debug_metadata(program.model)
    program.save(str(path))


def _drop_debug_metadata(model: ir.Model) -> None:
    """The exporter annotates every node with the Python stack that made it (this machine's
    source paths, and a counter of the graph modules traced so far in the process), which
    leaks the build machine's layout into artifacts shipped to the sidecar and makes two
    builds of the same networks differ in bytes. Without it a rebuild can be checked
    against a manifest's sha256."""
    for graph in (model.graph, *model.functions.values()):
        graph.metadata_props.clear()
        for node in ir.traversal.RecursiveGraphIterator(graph):
            node.metadata_props.clear()


@torch.no_grad()
def check_export(model: nn.Module, path: Path, x: np.ndarray) -> float:
    """The relative difference of the logits, onnxruntime against torch; raises above
    MAX_RELATIVE_DIFF."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {INPUT_NAME: np.ascontiguousarray(x, np.float32)})[0]
    torch_logits = model(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()
    diff = relative_difference(onnx_logits, torch_logits)
    if not diff <= MAX_RELATIVE_DIFF:
        raise UserError(f"ONNX export {path.name} differs from torch by {diff:.3g} (> {MAX_RELATIVE_DIFF}, relative): "
                        "the model uses an operator the exporter does not translate faithfully")
    return diff
