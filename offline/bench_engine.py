"""The engine benchmark: the firewall's onnxruntime scoring against eager PyTorch.

Both sides run the same rules on the same models (the build writes the models as ONNX
for the sidecar and as torch.export programs for this comparison) with the same number
of CPU threads, at batch 1, 8 and 64:
- the first stage: M's prediction, the BaDExpert score (B and each M' the build made),
  the exposed margin (E), the Mahalanobis distance (M's penultimate features), the
  auxiliary posterior, the expert posterior (B's penultimate features), the
  layer-Mahalanobis distance (M's tapped layers), the
  spectrum rule's distance (the input's own block spectrum) and the trigger direction (M's
  penultimate features again) on every input; eager
  PyTorch runs M's layers once for the features and the prediction, as the fused graph
  the sidecar serves does; onnxruntime also as separate sessions (M whole for
  the prediction, M up to its penultimate layer for the features, M's tapped layers, B
  and each M' whole and up to their penultimate layers, E), and
  as the fused graph's int8 copy where the artifacts were quantized (`offline quantize`),
  and on CUDA the fused graph also uncaptured (`SessionTuning.cuda_graphs` off: every
  batch padded to one size and its kernels launched one by one), the cost the captured
  replays cut; with `--stacked ARTIFACTS`, a build of the same models with
  `--stack-networks`, its fused graph too (B, the auxiliaries and E as one network);
- `strip`: exposed STRIP, E on 64 superimposed copies of every input.
Each cell is the median over repeated calls of the time one call takes. With `--device
cuda` eager PyTorch runs on the GPU (each call waits for the GPU to finish) and
onnxruntime on its CUDA execution provider, which the sidecar picks whenever the
installed onnxruntime offers it.

usage: python -m offline.bench_engine CASE_DIR [--threads 1] [--seconds 2] [--device cpu|cuda]
       [--stacked ARTIFACTS] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from firewall.artifacts import INT8_FUSED_FILES, TORCH_FILES, Artifacts, load_artifacts
from firewall.errors import UserError
from firewall.models import SessionTuning
from firewall.probabilities import prob_of
from firewall.rules import auxiliary_roles
from firewall.rules.auxiliary_posterior import posterior_by_class
from firewall.rules.badexpert import triangle_statistic
from firewall.rules.exposed import margin_by_class
from firewall.rules.layer_mahalanobis import LayerGaussians, layer_mahalanobis_by_class
from firewall.rules.mahalanobis import mahalanobis_by_class
from firewall.rules.spectrum_mahalanobis import spectrum_mahalanobis_by_class
from firewall.rules.trigger_direction import trigger_direction_by_class
from firewall.scoring import ScoringEngine
from offline.build.fused_export import (LayerMahalanobisByClass, MahalanobisByClass, SpectrumMahalanobisByClass,
                                       TriggerDirectionByClass, badexpert_by_class, exposed_by_class,
                                       posterior_by_class_torch)
from offline.build.layer_taps import TappedFeatures
from offline.build.trunk_split import split_before_classifier
from offline.machine import case_description, describe_machine
from offline.model_io import load_pt2

BATCHES = (1, 8, 64)
FIRST_STAGE = "first stage"  # the report names its rules (`first_stage_rules`) and sessions (`separate_sessions`)
EAGER, SEPARATE, FUSED = "eager PyTorch", "onnxruntime, separate sessions", "onnxruntime, fused graph"
FUSED_INT8 = "onnxruntime, fused graph, int8"  # where the artifacts were quantized (`offline quantize`)
FUSED_UNCAPTURED = "onnxruntime, fused graph, no CUDA graphs"  # on CUDA: the path before the captured replays
FUSED_STACKED = "onnxruntime, fused graph, stacked networks"  # with --stacked (`offline build --stack-networks`)


@dataclass(frozen=True)
class StoredGaussians:
    """The clean class Gaussians an artifacts set holds, read once for both implementations."""

    by_model: dict[str, tuple[np.ndarray, np.ndarray]]  # M's ("original"), B's and each auxiliary's features
    layers: list[LayerGaussians]  # M's tapped layers
    spectrum: tuple[np.ndarray, np.ndarray]  # the inputs' block spectra
    direction: tuple[np.ndarray, np.ndarray]  # the trigger-direction rule's map of M's features

    @classmethod
    def of(cls, artifacts: Artifacts, auxiliaries: list[str]) -> "StoredGaussians":
        return cls({"original": artifacts.class_gaussians(),
                    **{role: artifacts.class_gaussians(role) for role in ("expert", *auxiliaries)}},
                   artifacts.layer_gaussians(), artifacts.class_gaussians("spectrum"), artifacts.trigger_direction())


def _is_target(yhat, suspected_target: int | None):
    """The suspected-target rule on predictions (a tensor or an array): whether each is the target."""
    return yhat == (-1 if suspected_target is None else suspected_target)


class EagerRules:
    """The serving rules written directly in PyTorch, run eagerly on the torch models."""

    def __init__(self, artifacts_dir: Path, bank: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
                 gaussians: StoredGaussians, auxiliaries: list[str], input_shape: tuple[int, ...],
                 suspected_target: int | None = None, device: str = "cpu"):
        self.suspected_target = suspected_target
        roles = ["original", "expert", "exposed", *auxiliaries]
        self.models = {role: load_pt2(artifacts_dir / TORCH_FILES[role]).module().to(device) for role in roles}
        self.auxiliaries = {role: split_before_classifier(self.models[role]) for role in auxiliaries}
        self.original = split_before_classifier(self.models["original"])
        self.expert = split_before_classifier(self.models["expert"])
        self.mahalanobis = {role: MahalanobisByClass(*gaussians.by_model[role]).to(device)
                            for role in ["original", "expert", *auxiliaries]}
        # M's features with its tapped layers, found again in the reloaded graph by the build's rule.
        self.features = TappedFeatures(self.original.trunk).to(device)
        self.layer_mahalanobis = LayerMahalanobisByClass(gaussians.layers).to(device)
        self.spectrum_mahalanobis = SpectrumMahalanobisByClass(input_shape, *gaussians.spectrum).to(device)
        self.trigger_direction = TriggerDirectionByClass(*gaussians.direction).to(device)
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(mean, device=device).reshape(shape)
        self.std = torch.tensor(std, device=device).reshape(shape)
        self.bank_pixels = torch.from_numpy(bank).to(device) * self.std + self.mean

    @classmethod
    def of(cls, artifacts: Artifacts, bank: np.ndarray, gaussians: StoredGaussians, auxiliaries: list[str],
           device: str = "cpu") -> "EagerRules":
        """The eager rules of an artifacts set."""
        manifest = artifacts.manifest
        norm = manifest.normalization
        return cls(artifacts.root, bank, norm.mean, norm.std, gaussians, auxiliaries, manifest.input_shape,
                   manifest.suspected_target, device)

    @torch.inference_mode()
    def first_stage(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """M's prediction, and the BaDExpert (with each auxiliary), exposed-margin, Mahalanobis,
        auxiliary-posterior (with each auxiliary), expert-posterior, layer-Mahalanobis,
        spectrum, trigger-direction and suspected-target scores of it."""
        features, pooled = self.features(x)
        yhat = self.original.head(features).argmax(dim=1)
        expert_features = self.expert.trunk(x)
        b = self.expert.head(expert_features).softmax(dim=1)
        expert_posterior = posterior_by_class_torch(self.mahalanobis["expert"](expert_features))
        badexpert, posteriors = [], []
        for role, split in self.auxiliaries.items():
            aux_features = split.trunk(x)
            badexpert.append(badexpert_by_class(b, split.head(aux_features).softmax(dim=1)))
            posteriors.append(posterior_by_class_torch(self.mahalanobis[role](aux_features)))
        exposed = exposed_by_class(self.models["exposed"](x))
        mahalanobis = self.mahalanobis["original"](features)
        return (yhat, *(scores.gather(1, yhat[:, None])[:, 0]
                        for scores in (*badexpert, exposed, mahalanobis, *posteriors, expert_posterior,
                                       self.layer_mahalanobis(pooled), self.spectrum_mahalanobis(x),
                                       self.trigger_direction(features))),
                _is_target(yhat, self.suspected_target).float())

    @torch.inference_mode()
    def strip(self, x: torch.Tensor, yhat: torch.Tensor) -> torch.Tensor:
        pixels = x * self.std + self.mean
        mixed = (pixels[:, None] + self.bank_pixels[None]).clamp(0.0, 1.0).flatten(0, 1)
        probs = self.models["exposed"]((mixed - self.mean) / self.std).softmax(dim=1)
        return probs.reshape(len(x), len(self.bank_pixels), -1).gather(
            2, yhat[:, None, None].expand(-1, len(self.bank_pixels), 1))[:, :, 0].mean(dim=1)


class SeparateSessionRules:
    """The first stage from one onnxruntime session per network, the numpy rules on their
    outputs: what the engine would cost without the fused graph."""

    def __init__(self, engine: ScoringEngine, gaussians: StoredGaussians, auxiliaries: list[str]):
        self.models, self.gaussians, self.auxiliaries = engine.models, gaussians, auxiliaries
        self.suspected_target = engine.manifest.suspected_target

    def first_stage(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """M's prediction and the first-stage scores of it, in EagerRules.first_stage's order."""
        models, gaussians = self.models, self.gaussians
        yhat = models.logits("original", x).argmax(axis=1)
        b = prob_of(models.probs("expert", x), yhat)
        badexpert = [-triangle_statistic(b, prob_of(models.probs(role, x), yhat)) for role in self.auxiliaries]
        posteriors = [prob_of(posterior_by_class(mahalanobis_by_class(
            models.logits(f"{role}_features", x).reshape(len(x), -1), *gaussians.by_model[role])), yhat)
            for role in (*self.auxiliaries, "expert")]
        features = models.logits("features", x).reshape(len(x), -1)
        by_layer = layer_mahalanobis_by_class(models.logits("layer_features", x), gaussians.layers)
        return (yhat, *badexpert, prob_of(margin_by_class(models.logits("exposed", x)), yhat),
                prob_of(mahalanobis_by_class(features, *gaussians.by_model["original"]), yhat), *posteriors,
                prob_of(by_layer, yhat), prob_of(spectrum_mahalanobis_by_class(x, *gaussians.spectrum), yhat),
                prob_of(trigger_direction_by_class(features, *gaussians.direction), yhat),
                _is_target(yhat, self.suspected_target).astype(np.float64))


def _median_seconds(call: Callable[[], object], seconds: float, max_calls: int = 5000) -> float:
    for _ in range(3):
        call()
    times = []
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop and len(times) < max_calls:
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def _waiting_for(device: str, call: Callable[[], object]) -> Callable[[], object]:
    """`call`, returning only once the device has finished it (CUDA kernels run asynchronously)."""
    if device == "cpu":
        return call
    return lambda: (call(), torch.cuda.synchronize())


def _stacked_engine(path: Path, artifacts: Artifacts, x: np.ndarray, threads: int) -> ScoringEngine:
    """The engine of a stacked build of the same models as `artifacts`, checked on `x` on the
    CPU: other models score differently by order one, a stacked graph by float rounding (on
    a GPU, TF32 and the kernels cuDNN picks per shape move scores by up to a few percent)."""
    stacked = load_artifacts(path)
    if not stacked.manifest.raw.get("fused_networks", {}).get("stacked"):
        raise UserError(f"{path} does not stack its networks: build it with offline build --stack-networks")
    on_cpu = [ScoringEngine(a, providers=["CPUExecutionProvider"]) for a in (artifacts, stacked)]
    rules = on_cpu[0].first_stage_rules
    if on_cpu[1].first_stage_rules != rules or not first_stages_agree(*on_cpu, x, rtol=1e-3, atol=1e-3):
        raise UserError(f"{path} scores otherwise than the case's artifacts: it is not a build of the same models")
    return ScoringEngine(stacked, tuning=SessionTuning(threads=threads))


def first_stages_agree(engine: ScoringEngine, other: ScoringEngine, x: np.ndarray, rtol: float, atol: float) -> bool:
    """Whether two engines predict the same classes on x and score every first-stage rule of
    the first alike: two builds of the same networks (stacked, or around reused models) do,
    to float rounding."""
    rules = engine.first_stage_rules
    (yhat, ours), (their_yhat, theirs) = engine.score(x, rules=rules), other.score(x, rules=rules)
    return np.array_equal(yhat, their_yhat) and all(np.allclose(theirs[r], ours[r], rtol=rtol, atol=atol)
                                                    for r in rules)


def run(case: Path, threads: int, seconds: float, device: str = "cpu", stacked_artifacts: Path | None = None) -> dict:
    artifacts = load_artifacts(case / "artifacts")
    engine = ScoringEngine(artifacts, tuning=SessionTuning(threads=threads))  # the serving rules
    pool = np.load(case / "test_clean.npz")["x"]
    stacked = _stacked_engine(stacked_artifacts, artifacts, pool[:64], threads) if stacked_artifacts else None
    int8 = (ScoringEngine(artifacts, tuning=SessionTuning(threads=threads), precision="int8")
            if INT8_FUSED_FILES["fused"] in artifacts.manifest.files else None)
    uncaptured = (ScoringEngine(artifacts, tuning=SessionTuning(threads=threads, cuda_graphs=False))
                  if device == "cuda" else None)
    first_stage = engine.first_stage_rules
    auxiliaries = auxiliary_roles(first_stage)
    torch.set_num_threads(threads)
    gaussians = StoredGaussians.of(artifacts, auxiliaries)
    eager = EagerRules.of(artifacts, engine.bank, gaussians, auxiliaries, device)
    separate = SeparateSessionRules(engine, gaussians, auxiliaries)
    models = engine.models

    rows = []
    for batch in BATCHES:
        x = np.ascontiguousarray(pool[:batch], np.float32)
        tx = torch.from_numpy(x).to(device)
        yhat = engine.score(x, rules=first_stage)[0]
        ty = torch.from_numpy(yhat).to(device)
        cells = {
            (FIRST_STAGE, EAGER): _waiting_for(device, lambda: eager.first_stage(tx)),
            (FIRST_STAGE, SEPARATE): lambda: separate.first_stage(x),
            (FIRST_STAGE, FUSED): lambda: engine.score(x, rules=first_stage),
            **({(FIRST_STAGE, FUSED_INT8): lambda: int8.score(x, rules=first_stage)} if int8 else {}),
            **({(FIRST_STAGE, FUSED_UNCAPTURED): lambda: uncaptured.score(x, rules=first_stage)} if uncaptured else {}),
            **({(FIRST_STAGE, FUSED_STACKED): lambda: stacked.score(x, rules=first_stage)} if stacked else {}),
            ("strip", EAGER): _waiting_for(device, lambda: eager.strip(tx, ty)),
            ("strip", "onnxruntime"): lambda: engine.score(x, yhat=yhat, rules=("strip",)),
        }
        for (rule, implementation), call in cells.items():
            per_call = _median_seconds(call, seconds)
            rows.append({"rule": rule, "implementation": implementation, "batch": batch,
                         "ms_per_call": per_call * 1e3, "inputs_per_s": batch / per_call})
            print(f"batch {batch:>3} {rule:<34} {implementation:<26} {per_call * 1e3:8.3f} ms", flush=True)
    return {"case": str(case), "case_description": case_description(case), "threads": threads,
            "seconds_per_cell": seconds, "device": device,
            "first_stage_rules": list(first_stage),
            "separate_sessions": sum(role in artifacts.model_roles for role in models.sessions),  # what ran
            # where each session ran, and on CUDA which replayed captured graphs: a session
            # that fell back to the CPU would explain a slow row
            "session_providers": {role: session.get_providers()[0] for role, session in models.sessions.items()},
            "cuda_graphs": models.describe_capture(),
            "machine": {**describe_machine(engine.models.providers), "torch": torch.__version__},
            "results": rows}


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench_engine", description=__doc__.splitlines()[0])
    parser.add_argument("case", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where eager PyTorch runs; onnxruntime runs where the sidecar would (CUDA when offered)")
    parser.add_argument("--stacked", type=Path, metavar="ARTIFACTS",
                        help="also time the fused graph of this build of the same models with --stack-networks")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    try:
        report = run(args.case, args.threads, args.seconds, args.device, args.stacked)
    except UserError as refused:
        parser.error(str(refused))
    ran = report["machine"]["providers"][0]
    if args.device == "cuda" and ran != "CUDAExecutionProvider":
        parser.error(f"--device cuda: onnxruntime ran on {ran}; install onnxruntime-gpu with CUDA and cuDNN it can load")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
