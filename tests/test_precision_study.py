"""The int8 study measures what `offline calibrate --precision int8` would serve, beside the float verdict."""

from __future__ import annotations

import shutil
from pathlib import Path

from offline.cascade_study import measure, score_case
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
