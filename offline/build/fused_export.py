"""The fused scoring graphs: the BaDExpert rule's classifiers and arithmetic in one ONNX run.

Serving every request through three separate sessions pays three session overheads
and three copies of the input; one graph with a shared input pays one. The graph
scores every class, `[N, K]` ("how suspicious if M predicted k"), so the same graph
serves whether the prediction comes from M inside the graph or, with
`--prediction-from-upstream`, from the production server's own answer, which can
arrive after scoring has finished.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from firewall.artifacts import (
    BY_CLASS_OUTPUT,
    FUSED_FILES,
    PREDICTION_OUTPUT,
)
from firewall.errors import UserError
from firewall.rules.badexpert import triangle_statistic
from offline.build.onnx_export import INPUT_NAME, export_onnx

# The rule divides by probabilities that can be 1e-6: float32 rounding of b or a moves
# such a score by parts in 1e4 (measured 1.6e-4 on shapes/blend). A wrong graph is off
# by order one.
MAX_RELATIVE_DIFF = 1e-3


def badexpert_by_class(b: torch.Tensor, a: torch.Tensor, gamma: float = 0.5) -> torch.Tensor:
    """-t for every class at once (see firewall.rules.badexpert.triangle_statistic)."""
    t = torch.minimum(a / (gamma * b.clamp_min(1e-8)), (1.0 - b) / (gamma - a).clamp_min(1e-8))
    return -t


class BadExpertScorer(nn.Module):
    """x -> the BaDExpert score for every class, from the expert and the auxiliary."""

    def __init__(self, expert: nn.Module, auxiliary: nn.Module):
        super().__init__()
        self.expert, self.auxiliary = expert, auxiliary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return badexpert_by_class(self.expert(x).softmax(dim=1), self.auxiliary(x).softmax(dim=1))


class PredictingScorer(nn.Module):
    """x -> (M's prediction, the BaDExpert score for every class)."""

    def __init__(self, original: nn.Module, scorer: BadExpertScorer):
        super().__init__()
        self.original, self.scorer = original, scorer

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.original(x).argmax(dim=1), self.scorer(x)


def export_fused(models: dict[str, nn.Module], example: torch.Tensor, out: Path, check_x: np.ndarray) -> dict:
    """Write both fused graphs and check them against the numpy rule on real inputs."""
    scorer = BadExpertScorer(models["expert"], models["auxiliary"])
    graphs = {"fused": (PredictingScorer(models["original"], scorer), [PREDICTION_OUTPUT, BY_CLASS_OUTPUT]),
              "fused_without_original": (scorer, [BY_CLASS_OUTPUT])}
    for role, (module, outputs) in graphs.items():
        export_onnx(module, example, out / FUSED_FILES[role], output_names=outputs)
    return {role: _check(models, out / FUSED_FILES[role], check_x) for role in graphs}


@torch.no_grad()
def _check(models: dict[str, nn.Module], path: Path, x: np.ndarray) -> float:
    """Largest relative difference of the scores between onnxruntime and the numpy rule on torch
    probabilities; predictions must match exactly."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {INPUT_NAME: x})))
    tx = torch.from_numpy(x)
    b = models["expert"](tx).softmax(dim=1).numpy()
    a = models["auxiliary"](tx).softmax(dim=1).numpy()
    expected = -triangle_statistic(b, a)
    if PREDICTION_OUTPUT in outputs and not np.array_equal(outputs[PREDICTION_OUTPUT],
                                                           models["original"](tx).argmax(dim=1).numpy()):
        raise UserError(f"{path.name}: the fused graph's predictions differ from the model's")
    diff = float((np.abs(outputs[BY_CLASS_OUTPUT] - expected) / np.maximum(1.0, np.abs(expected))).max())
    if not diff <= MAX_RELATIVE_DIFF:
        raise UserError(f"{path.name}: fused scores differ from the rule by {diff:.3g} (> {MAX_RELATIVE_DIFF})")
    return diff
