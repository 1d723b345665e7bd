"""The sidecar opens the graphs it serves, and only those, before it takes a request.

`Firewall.warm_up` hands the engine what the sidecar's configuration serves (the fused
graph with or without M, the cascade's rules when its band is open); these tests give
the engine the same, without importing the gRPC server (whose protocol module would
clash with tritonclient's in one test process).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from firewall.artifacts import THRESHOLDS, load_artifacts
from firewall.models import ModelSet, SessionTuning
from firewall.scoring import ScoringEngine
from firewall.thresholds import Thresholds
from offline.cli import main as offline


def _opened_after_warm_up(artifacts: Path, predict: bool = True) -> set[str]:
    loaded = load_artifacts(artifacts)
    fusion = Thresholds.load(loaded.path(THRESHOLDS)).fusion
    engine = ScoringEngine(loaded, rules=fusion.rules)
    assert engine.models.sessions == {}
    engine.warm_up(predict, fusion.reachable_later)
    return set(engine.models.sessions)


def _calibrated(tiny_case: Path, tiny_artifacts: Path, tmp_path: Path, *flags: str) -> Path:
    art = shutil.copytree(tiny_artifacts, tmp_path / "art")
    assert offline(["calibrate", "--artifacts", str(art), "--clean-data", str(tiny_case / "calib.npz"), *flags]) == 0
    return art


def test_the_default_sidecar_opens_the_fused_graph_and_the_models_its_cascade_runs(tiny_artifacts):
    # STRIP on M superimposes on the original model, exposed STRIP on the exposed one
    assert _opened_after_warm_up(tiny_artifacts) == {"fused", "original", "exposed"}


def test_with_the_band_closed_only_the_fused_graph_is_opened(tiny_case, tiny_artifacts, tmp_path):
    assert _opened_after_warm_up(_calibrated(tiny_case, tiny_artifacts, tmp_path, "--cascade-band", "0")) == {"fused"}


def test_with_the_upstreams_prediction_the_graph_without_the_original_model_is_opened(tiny_case, tiny_artifacts,
                                                                                       tmp_path):
    art = _calibrated(tiny_case, tiny_artifacts, tmp_path, "--cascade-band", "0")
    assert _opened_after_warm_up(art, predict=False) == {"fused_without_original"}


@pytest.mark.parametrize("later, opened", [("strip_original", {"fused", "original"}),
                                           ("strip", {"fused", "exposed"}),
                                           ("strip_original,strip", {"fused", "original", "exposed"})])
def test_an_open_cascade_band_also_opens_the_models_its_later_rules_run(tiny_case, tiny_artifacts, tmp_path,
                                                                         later, opened):
    art = _calibrated(tiny_case, tiny_artifacts, tmp_path, "--cascade-band", "0.1", "--later-rules", later)
    assert _opened_after_warm_up(art) == opened


def test_offline_scoring_opens_what_its_rules_ask_for(tiny_artifacts):
    artifacts = load_artifacts(tiny_artifacts)
    engine = ScoringEngine(artifacts, rules=("badexpert", "scaleup"))
    engine.score(np.zeros((2, *artifacts.manifest.input_shape), np.float32))
    assert set(engine.models.sessions) == {"fused", "original"}


class _RowsSeen:
    """A session stand-in that records the rows of every run and delegates to the real one."""

    def __init__(self, session, seen: list[int]):
        self._session, self._seen = session, seen

    def run(self, names, feed):
        self._seen.append(len(next(iter(feed.values()))))
        return self._session.run(names, feed)


@pytest.mark.parametrize("role, rows", [("fused", 6), ("exposed", 6)], ids=["first stage", "cascade's copies"])
def test_on_cuda_every_session_sees_one_batch_size_and_the_padding_never_reaches_a_score(tiny_artifacts, role, rows):
    # onnxruntime's CUDA convolutions redo their cuDNN set-up whenever the batch size
    # changes (300 ms a call on an H100), so on a GPU every run is padded to gpu_batch rows:
    # the fused graph's batches and the superimposed copies the cascade's band runs
    models = ModelSet(load_artifacts(tiny_artifacts), tuning=SessionTuning(gpu_batch=4))
    x = np.random.default_rng(0).random((rows, *models._artifacts.manifest.input_shape), np.float32)
    unpadded = models.run(role, x)
    seen: list[int] = []
    models.sessions[role] = _RowsSeen(models.sessions[role], seen)
    models._on_cuda.add(role)  # as if the session had opened on CUDA
    padded = models.run(role, x)
    assert seen == [4, 4]
    assert padded.keys() == unpadded.keys()
    for name, values in unpadded.items():
        assert np.array_equal(padded[name], values), name