"""ONNX export with a dynamic batch dimension, checked against torch on real inputs."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from firewall.errors import UserError

INPUT_NAME, OUTPUT_NAME = "input", "logits"
MAX_ABS_DIFF = 1e-4


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path,
                output_names: list[str] | tuple[str, ...] = (OUTPUT_NAME,)) -> None:
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamic_shapes=({0: batch},), input_names=[INPUT_NAME],
                                    output_names=list(output_names), dynamo=True, verbose=False)
    program.save(str(path))


@torch.no_grad()
def check_export(model: nn.Module, path: Path, x: np.ndarray) -> float:
    """Max abs difference of the logits, onnxruntime against torch; raises above 1e-4."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {INPUT_NAME: np.ascontiguousarray(x, np.float32)})[0]
    torch_logits = model(torch.from_numpy(np.ascontiguousarray(x, np.float32))).numpy()
    diff = float(np.abs(onnx_logits - torch_logits).max())
    if not diff <= MAX_ABS_DIFF:
        raise UserError(f"ONNX export {path.name} differs from torch by {diff:.3g} (> {MAX_ABS_DIFF}): "
                        "the model uses an operator the exporter does not translate faithfully")
    return diff
