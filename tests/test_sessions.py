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
import onnxruntime as ort
import pytest

from firewall.artifacts import THRESHOLDS, load_artifacts
from firewall.cuda_graph import BoundReplay, capture_sizes, with_cuda_graphs
from firewall.models import ModelSet, SessionTuning, UncapturedBlocks
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
    # as if the session had opened on CUDA and could not be captured
    models._blocks[role] = [UncapturedBlocks(_RowsSeen(models.sessions[role], seen), models.input_name, 4)]
    padded = models.run(role, x)
    assert seen == [4, 4]
    assert padded.keys() == unpadded.keys()
    for name, values in unpadded.items():
        assert np.array_equal(padded[name], values), name


def test_a_bound_replay_returns_what_an_ordinary_run_of_its_session_returns(tiny_artifacts):
    # on CUDA the captured graph reads and writes these bound buffers; on the CPU the same
    # binding runs uncaptured, which checks their shapes, types and copies
    artifacts = load_artifacts(tiny_artifacts)
    session = ort.InferenceSession(str(artifacts.model_path("fused")))
    shape = tuple(artifacts.manifest.input_shape)
    x = np.random.default_rng(0).random((3, *shape), np.float32)
    replay = BoundReplay(session, shape, rows=3, device="cpu")
    for replayed, ran in zip(replay.run(x), session.run(None, {artifacts.manifest.input_name: x}), strict=True):
        assert replayed.dtype == ran.dtype
        assert np.array_equal(replayed, ran)
    with pytest.raises(ValueError, match="runs 3 rows"):
        replay.run(x[:2])


def test_cuda_graphs_are_asked_of_the_cuda_provider_only():
    assert with_cuda_graphs(["CPUExecutionProvider"]) is None
    cuda = ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})
    asked = with_cuda_graphs([cuda, "CPUExecutionProvider"])
    assert asked == [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC", "enable_cuda_graph": "1"}),
                     "CPUExecutionProvider"]


def test_an_onnxruntime_that_holds_one_graph_a_session_captures_only_the_largest_batch_size():
    # before 1.18 a second graph id would replay the first size's buffers: wrong scores
    assert capture_sizes((1, 8, 32), version="1.17.3") == (32,)
    assert capture_sizes((1, 8, 32), version="1.18.0") == (1, 8, 32)
    assert capture_sizes((1, 8, 32), version="1.31.1") == (1, 8, 32)


class _ReplaySeen:
    """A replay stand-in that records the rows of every run and delegates to a real one."""

    def __init__(self, replay: BoundReplay, seen: list[int]):
        self.rows, self._replay, self._seen = replay.rows, replay, seen

    def run(self, x):
        self._seen.append(self.rows)
        return self._replay.run(x)


@pytest.mark.parametrize("inputs, runs", [(1, [1]), (2, [2]), (3, [4]), (6, [4, 4])])
def test_captured_a_batch_runs_on_the_smallest_captured_size_that_holds_it(tiny_artifacts, inputs, runs):
    # a lone request replays the one-row graph instead of paying for gpu_batch rows; beyond
    # the largest size, blocks of it; the padding never reaches a score
    tuning = SessionTuning(gpu_batch=4, cuda_graph_rows=(1, 2, 8))
    assert tuning.graph_rows == (1, 2, 4)
    models = ModelSet(load_artifacts(tiny_artifacts), tuning=tuning)
    shape = tuple(models._artifacts.manifest.input_shape)
    x = np.random.default_rng(1).random((inputs, *shape), np.float32)
    unpadded = models.run("fused", x)
    seen: list[int] = []
    # as if the session had opened on CUDA and been captured
    models._blocks["fused"] = [_ReplaySeen(BoundReplay(models.sessions["fused"], shape, rows, device="cpu"), seen)
                               for rows in tuning.graph_rows]
    replayed = models.run("fused", x)
    assert seen == runs
    for name, values in unpadded.items():
        assert np.array_equal(replayed[name], values), name


def test_the_start_line_says_which_cuda_sessions_replay_graphs_and_which_could_not_be_captured(tiny_artifacts):
    models = ModelSet(load_artifacts(tiny_artifacts), tuning=SessionTuning(gpu_batch=4, cuda_graph_rows=(1, 2)))
    shape = tuple(models._artifacts.manifest.input_shape)
    models.run("fused", np.zeros((1, *shape), np.float32))
    assert models.describe_capture() is None  # off CUDA
    # as if both had opened on CUDA, only fused captured
    models._blocks["fused"] = [BoundReplay(models.sessions["fused"], shape, rows, device="cpu") for rows in (1, 2, 4)]
    models._blocks["exposed"] = [UncapturedBlocks(models.session("exposed"), models.input_name, 4)]
    assert models.describe_capture() == "fused at 1, 2, 4 rows; uncaptured: exposed"


def test_the_separate_networks_also_capture_one_inputs_strip_copies(tiny_artifacts):
    # in the sidecar M and E run only on STRIP's superimposed copies (the bank's size per
    # input); the fused graphs never see more rows than the largest batch
    tuning = SessionTuning(gpu_batch=4, cuda_graph_rows=(1, 2))
    artifacts = load_artifacts(tiny_artifacts)
    models = ModelSet(artifacts, tuning=tuning, strip_copies=64)
    assert models.capture_ladder("fused") == (1, 2, 4)
    assert models.capture_ladder("exposed") == models.capture_ladder("original") == (1, 2, 4, 64)
    off = ModelSet(artifacts, tuning=SessionTuning(gpu_batch=4, cuda_graphs=False), strip_copies=64)
    assert off.capture_ladder("exposed") == ()


@pytest.mark.parametrize("inputs, runs", [(1, [64]), (2, [64, 64])])
def test_captured_a_band_inputs_strip_copies_run_as_one_replay_each(tiny_artifacts, inputs, runs):
    engine = ScoringEngine(load_artifacts(tiny_artifacts), tuning=SessionTuning(gpu_batch=4, cuda_graph_rows=(1, 2)))
    models, copies = engine.models, len(engine.bank)
    shape = tuple(engine.manifest.input_shape)
    x = np.random.default_rng(2).random((inputs * copies, *shape), np.float32)
    unpadded = models.logits("exposed", x)
    seen: list[int] = []
    # as if E had opened on CUDA and been captured at its ladder
    models._blocks["exposed"] = [_ReplaySeen(BoundReplay(models.sessions["exposed"], shape, rows, device="cpu"), seen)
                                 for rows in models.capture_ladder("exposed")]
    assert np.array_equal(models.logits("exposed", x), unpadded)
    assert seen == [copies] * inputs


def test_the_start_line_groups_the_captured_sessions_by_their_batch_sizes(tiny_artifacts):
    models = ModelSet(load_artifacts(tiny_artifacts), tuning=SessionTuning(gpu_batch=4, cuda_graph_rows=(1, 2)),
                      strip_copies=8)
    shape = tuple(models._artifacts.manifest.input_shape)
    for role in ("fused", "exposed", "original"):
        models.session(role)
        models._blocks[role] = [BoundReplay(models.sessions[role], shape, rows, device="cpu")
                                for rows in models.capture_ladder(role)]
    assert models.describe_capture() == "fused at 1, 2, 4 rows; exposed, original at 1, 2, 4, 8 rows"
