"""onnxruntime sessions for the four models of an artifacts directory."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from firewall.artifacts import MODEL_FILES, Artifacts
from firewall.probabilities import softmax


def default_providers() -> list[str]:
    """CUDA first when the installed onnxruntime offers it, the CPU always as fallback."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class ModelSet:
    """The original model M, backdoor expert B, auxiliary M' and exposed model E."""

    def __init__(self, artifacts: Artifacts, providers: list[str] | None = None, threads: int = 0):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        providers = providers or default_providers()
        self.input_name = artifacts.manifest.input_name
        self.sessions = {
            role: ort.InferenceSession(str(artifacts.model_path(role)), options, providers=providers)
            for role in MODEL_FILES
        }

    @property
    def providers(self) -> list[str]:
        """What actually runs: onnxruntime silently falls back to the CPU."""
        return self.sessions["original"].get_providers()

    def logits(self, role: str, x: np.ndarray) -> np.ndarray:
        return self.sessions[role].run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]

    def probs(self, role: str, x: np.ndarray) -> np.ndarray:
        return softmax(self.logits(role, x))
