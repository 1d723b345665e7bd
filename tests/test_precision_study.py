"""The int8 study measures what `offline calibrate --precision int8` would serve, beside the float verdict."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from offline.cascade_study import CaseScores, measure, score_case
from offline.precision_study import SETTINGS, int8_scores, to_markdown


def test_the_int8_study_scores_the_first_stage_in_int8_and_shares_the_later_rules(tiny_case, tiny_artifacts,
                                                                                 tmp_path):
    case = tmp_path / "case"
    shutil.copytree(tiny_case, case)
    shutil.copytree(tiny_artifacts, case / "artifacts")
    fp32 = score_case(case)
    int8 = int8_scores(case, fp32, tmp_path / "scratch")
    assert not (tmp_path / "scratch" / "case").exists()  # the quantized copy is removed
    assert not (case / "artifacts" / "fused.int8.onnx").exists()  # the case itself is untouched
    for part in ("calib", "clean", "backdoor"):
        first, shared = getattr(fp32, part), getattr(int8, part)
        assert set(first) == set(shared)
        assert all((first[rule] == shared[rule]).all() for rule in ("strip", "strip_original"))
        assert any((first[rule] != shared[rule]).any() for rule in fp32.first_stage_rules)
    results = {"case": {"fp32": {label: measure(fp32)[s] for label, s in SETTINGS.items()},
                        "int8": {label: measure(int8)[s] for label, s in SETTINGS.items()}}}
    assert "| case | " in to_markdown(results)



def test_with_a_scores_cache_the_int8_scores_are_kept_and_read_back_without_quantizing_again(
        tiny_case, tiny_artifacts, tmp_path):
    case, cache = tmp_path / "case", tmp_path / "scores"
    shutil.copytree(tiny_case, case)
    shutil.copytree(tiny_artifacts, case / "artifacts")
    fp32 = score_case(case, cache)
    int8 = int8_scores(case, fp32, tmp_path / "scratch", cache)
    assert sorted(p.name for p in cache.iterdir()) == ["case.int8.npz", "case.npz"]
    for model in (case / "artifacts").glob("*.onnx"):
        model.unlink()  # scoring again could not even load the models
    again = int8_scores(case, score_case(case, cache), tmp_path / "scratch", cache)
    assert again.first_stage_rules == int8.first_stage_rules
    for part in ("calib", "clean", "backdoor"):
        assert all((getattr(again, part)[rule] == values).all() for rule, values in getattr(int8, part).items())


def test_a_cached_score_made_from_other_data_is_scored_again(tiny_case, tiny_artifacts, tmp_path):
    case, cache = tmp_path / "case", tmp_path / "scores"
    shutil.copytree(tiny_case, case)
    shutil.copytree(tiny_artifacts, case / "artifacts")
    before = score_case(case, cache)
    with np.load(case / "calib.npz") as calib:
        half = {key: calib[key][: len(calib["x"]) // 2] for key in calib.files}
    np.savez(case / "calib.npz", **half)
    after = score_case(case, cache)
    assert len(after.calib["mahalanobis"]) == len(before.calib["mahalanobis"]) // 2
    assert len(score_case(case, cache).calib["mahalanobis"]) == len(after.calib["mahalanobis"])  # and kept


def _scoring_one_way() -> int:
    return 1


def _scoring_another_way() -> int:
    return 2


def test_a_cached_score_is_scored_again_when_the_study_s_scoring_code_changes_and_not_otherwise(tmp_path):
    case, path, calls = tmp_path / "case", tmp_path / "scores" / "case.npz", []
    case.mkdir()

    def compute() -> CaseScores:
        calls.append(1)
        return CaseScores(("badexpert",), *({"badexpert": np.arange(3.0) + len(calls)} for _ in CaseScores.PARTS))

    first = CaseScores.cached(path, case, compute, (_scoring_one_way,))
    kept = CaseScores.cached(path, case, compute, (_scoring_one_way,))
    assert len(calls) == 1 and (kept.calib["badexpert"] == first.calib["badexpert"]).all()
    changed = CaseScores.cached(path, case, compute, (_scoring_another_way,))
    assert len(calls) == 2 and (changed.calib["badexpert"] != first.calib["badexpert"]).all()
