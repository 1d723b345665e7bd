"""poison -> build -> calibrate -> evaluate on a tiny model, through the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from firewall.artifacts import MODEL_FILES, load_artifacts
from firewall.fusion import DEFAULT_EXPOSED_WEIGHT, DEFAULT_LATER_RULE_WEIGHT
from offline.cli import main as offline
from offline.data.tensorsets import TensorSet, load_tensor_set


def test_poison_writes_the_files_design_lists(tiny_case: Path):
    for name in ("model.pt2", "clean.npz", "calib.npz", "test_clean.npz", "test_triggered.npz", "attack.json"):
        assert (tiny_case / name).is_file(), name
    report = json.loads((tiny_case / "attack.json").read_text())
    assert 0.0 <= report["clean_accuracy"] <= 1.0 and 0.0 <= report["attack_success_rate"] <= 1.0
    triggered = np.load(tiny_case / "test_triggered.npz")
    assert set(triggered.files) == {"x", "y", "target"} and (triggered["target"] == 0).all()


def test_poisoned_models_and_builds_name_the_torch_and_the_cpu_kernels_that_made_them(tiny_case: Path,
                                                                                     tiny_artifacts: Path):
    """The same seed under another torch trains other weights, so a record must say which."""
    import torch

    attack = json.loads((tiny_case / "attack.json").read_text())
    build = json.loads((tiny_artifacts / "manifest.json").read_text())["build"]
    for record in (attack, build):
        software, platform = record["software"], record["platform"]
        assert software["torch"] == torch.__version__.split("+")[0] and "onnx" in software and "python" in software
        # ... and the same seed and versions on another CPU trained other weights, so they name its kernels too.
        assert platform["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        assert platform["torch_threads"] >= 1


def test_build_writes_a_verified_manifest_with_the_contract_keys(tiny_artifacts: Path):
    manifest = json.loads((tiny_artifacts / "manifest.json").read_text())
    assert manifest["name"] == "classifier"
    assert manifest["input"]["name"] == "input" and manifest["input"]["shape"] == [1, 16, 16]
    assert manifest["input"]["datatype"] == "FP32" and manifest["output"]["name"] == "logits"
    assert manifest["num_classes"] == 10
    for role in ("expert", "auxiliary", "exposed"):
        info = manifest["models"][role]
        assert info["steps"] >= 1 and info["stopped_by"] in {"criterion", "budget"}
        assert 0.0 <= info["heldout_clean_accuracy"] <= 1.0
    assert all(diff <= 1e-4 for diff in manifest["onnx_max_relative_diff"].values())
    gaussians = manifest["mahalanobis"]  # M's penultimate features, the Mahalanobis rule's clean fit
    assert gaussians["samples"] == manifest["build"]["clean_samples"] and gaussians["feature_dim"] >= 1
    assert 0.0 <= gaussians["ledoit_wolf_shrinkage"] <= 1.0 and gaussians["classes_without_samples"] == []
    load_artifacts(tiny_artifacts)  # every sha256 matches


def test_expert_unlearning_stops_on_its_clean_criterion(tiny_artifacts: Path):
    expert = json.loads((tiny_artifacts / "manifest.json").read_text())["models"]["expert"]
    assert expert["stopped_by"] == "criterion"
    assert expert["heldout_clean_accuracy"] <= 0.05


def test_the_expert_rate_is_the_one_that_forgot_with_the_least_weight_change(tiny_artifacts: Path):
    expert = json.loads((tiny_artifacts / "manifest.json").read_text())["models"]["expert"]
    collapsed = [run for run in expert["selection"]["search"] if run["stopped_by"] == "criterion"]
    assert collapsed and expert["lr"] == min(collapsed, key=lambda run: run["weight_change"])["lr"]


def test_the_auxiliary_rate_is_the_largest_that_dips_and_recovers(tiny_artifacts: Path):
    auxiliary = json.loads((tiny_artifacts / "manifest.json").read_text())["models"]["auxiliary"]
    search = auxiliary["selection"]["search"]
    tried = [run["lr"] for run in search]
    assert tried == sorted(tried, reverse=True)  # largest first
    assert not any(run["dipped"] and run["recovered"] for run in search[:-1])  # it stops at the first that does both
    if search[-1]["dipped"] and search[-1]["recovered"]:
        assert auxiliary["lr"] == search[-1]["lr"]
    assert all(len(run["trajectory"]) == 11 for run in search)  # M, then every epoch


def test_onnx_models_take_any_batch_size(tiny_artifacts: Path):
    manifest = json.loads((tiny_artifacts / "manifest.json").read_text())
    features = {"features": manifest["mahalanobis"]["feature_dim"],
                **{f"{role}_features": space["feature_dim"] for role, space in manifest["auxiliary_posterior"].items()},
                "expert_features": manifest["expert_posterior"]["feature_dim"],
                "layer_features": sum(layer["feature_dim"] for layer in manifest["layer_mahalanobis"]["layers"])}
    artifacts = load_artifacts(tiny_artifacts)
    assert ({"auxiliary_features", "auxiliary_tsbd_features", "expert_features", "layer_features"}
            <= set(artifacts.model_roles))
    for role, filename in ((r, MODEL_FILES[r]) for r in artifacts.model_roles):
        session = ort.InferenceSession(str(tiny_artifacts / filename), providers=["CPUExecutionProvider"])
        for batch in (1, 7):
            out = session.run(None, {"input": np.zeros((batch, 1, 16, 16), np.float32)})[0]
            assert out.shape == (batch, features.get(role, 10))


def test_calibration_meets_the_target_on_the_calibration_set(tiny_artifacts: Path):
    thresholds = json.loads((tiny_artifacts / "thresholds.json").read_text())
    assert thresholds["target_fpr"] == 0.01
    for rule in ("badexpert", "exposed", "mahalanobis", "strip", "strip_original", "scaleup", "firewall"):
        entry = thresholds["rules"][rule]
        assert entry["fpr"] <= 0.01 and entry["n"] > 100


def test_calibrating_on_inputs_the_build_saw_warns_with_their_count(tiny_case: Path, tiny_artifacts: Path,
                                                                     tmp_path: Path, capsys):
    """Every fitted part has seen the build's clean inputs; thresholds taken there would be too low.
    The inputs are recognised by content, so a copy or a mixture with new inputs is caught too."""
    copy = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, copy)
    assert offline(["calibrate", "--artifacts", str(copy), "--clean-data", str(tiny_case / "calib.npz")]) == 0
    assert "warning" not in capsys.readouterr().err
    built_from, calib = load_tensor_set(tiny_case / "clean.npz"), load_tensor_set(tiny_case / "calib.npz")
    mixed = TensorSet(np.concatenate([calib.x, built_from.x[:7]]), np.concatenate([calib.y, built_from.y[:7]]))
    mixed.save(tmp_path / "mixed.npz")
    assert offline(["calibrate", "--artifacts", str(copy), "--clean-data", str(tmp_path / "mixed.npz")]) == 0
    assert f"warning: 7 of the {len(mixed)} inputs" in capsys.readouterr().err


def test_calibrate_fuses_the_later_rules_it_is_given_inside_the_band(tiny_case: Path, tiny_artifacts: Path,
                                                                     tmp_path: Path):
    copy = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, copy)
    calibrate = ["calibrate", "--artifacts", str(copy), "--clean-data", str(tiny_case / "calib.npz")]
    for later, fused_later in (("strip", ["strip"]), ("strip_original,strip", ["strip_original", "strip"]),
                               ("", [])):
        assert offline([*calibrate, "--cascade-band", "0.1", "--later-rules", later]) == 0
        fusion = json.loads((copy / "thresholds.json").read_text())["fusion"]
        assert fusion["rules"][fusion["first_stage"]:] == fused_later and fusion["band_fraction"] == 0.1
        assert all(fusion["weights"][rule] == DEFAULT_LATER_RULE_WEIGHT for rule in fused_later)


def test_calibrate_weighs_the_later_rules_evidence_as_asked(tiny_case: Path, tiny_artifacts: Path, tmp_path: Path,
                                                            capsys):
    copy = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, copy)
    assert offline(["calibrate", "--artifacts", str(copy), "--clean-data", str(tiny_case / "calib.npz"),
                    "--later-rule-weight", "0.25"]) == 0
    fusion = json.loads((copy / "thresholds.json").read_text())["fusion"]
    later = fusion["rules"][fusion["first_stage"]:]
    assert later == ["strip_original", "strip"]
    assert {rule: fusion["weights"][rule] for rule in later} == {"strip_original": 0.25, "strip": 0.25}
    assert fusion["weights"]["exposed"] == DEFAULT_EXPOSED_WEIGHT
    assert (f"cascade: strip_original (weight 0.25) and strip (weight 0.25) for inputs in the top 5% of the clean "
            f"calibration inputs' first-stage evidence ({fusion['band_share']:.1%} of them)") in capsys.readouterr().out


@pytest.mark.parametrize("later", ["scaleup", "strip,strip"])
def test_calibrate_refuses_later_rules_the_cascade_cannot_run(tiny_case: Path, tiny_artifacts: Path, later: str,
                                                             capsys):
    assert offline(["calibrate", "--artifacts", str(tiny_artifacts), "--clean-data", str(tiny_case / "calib.npz"),
                    "--later-rules", later]) != 0
    assert "--later-rules takes distinct names among ['strip_original', 'strip']" in capsys.readouterr().err


def test_the_cascade_study_measures_the_verdict_offline_calibrate_makes(tiny_case: Path, tiny_artifacts: Path,
                                                                       tmp_path: Path):
    from offline.cascade_study import DEFAULT, study

    case = tmp_path / "case"
    case.mkdir()
    for name in ("calib.npz", "test_clean.npz", "test_triggered.npz"):
        (case / name).symlink_to(tiny_case / name)
    (case / "artifacts").symlink_to(tiny_artifacts)
    report = tmp_path / "eval.json"
    assert offline(["evaluate", "--artifacts", str(tiny_artifacts), "--clean-data", str(tiny_case / "test_clean.npz"),
                    "--backdoor-data", str(tiny_case / "test_triggered.npz"), "--json", str(report)]) == 0
    verdict = json.loads(report.read_text())["rules"]["firewall"]
    measured = study(case, cache=tmp_path / "scores")
    assert measured[DEFAULT]["auroc"] == pytest.approx(verdict["auroc"])
    assert measured[DEFAULT]["tpr_at_1"] == pytest.approx(verdict["tpr_at_fpr"]["0.01"])
    assert measured[DEFAULT]["fpr"] == pytest.approx(verdict["threshold_fpr"])
    (case / "artifacts").unlink()  # the second run reads the scores it kept: no model is left to score with
    (case / "artifacts").mkdir()
    shutil.copy(tiny_artifacts / "manifest.json", case / "artifacts")
    assert study(case, cache=tmp_path / "scores") == measured


def test_evaluate_writes_the_json_contract_and_plots(tiny_case: Path, tiny_artifacts: Path, tmp_path: Path):
    out = tmp_path / "eval.json"
    assert offline(["evaluate", "--artifacts", str(tiny_artifacts), "--clean-data", str(tiny_case / "test_clean.npz"),
                    "--backdoor-data", str(tiny_case / "test_triggered.npz"), "--json", str(out),
                    "--plots", str(tmp_path / "plots")]) == 0
    report = json.loads(out.read_text())
    assert report["n_clean"] > 0 and report["n_backdoor"] > 0
    for rule in ("badexpert", "exposed", "mahalanobis", "strip", "strip_original", "scaleup", "firewall"):
        entry = report["rules"][rule]
        assert 0.0 <= entry["auroc"] <= 1.0
        assert set(entry["tpr_at_fpr"]) == {"0.01", "0.05"}
        assert 0.0 <= entry["threshold_fpr"] <= 1.0 and 0.0 <= entry["threshold_tpr"] <= 1.0
        assert 0.0 <= entry["auroc_same_class"] <= 1.0
    assert report["target_classes"] == [0]
    by_class, counts = report["firewall_fpr_by_predicted_class"], report["clean_by_predicted_class"]
    assert sum(counts) == report["n_clean"]
    rejected = sum(rate * n for rate, n in zip(by_class, counts) if n)
    assert rejected / report["n_clean"] == pytest.approx(report["rules"]["firewall"]["threshold_fpr"])
    for png in ("roc.png", "roc_badexpert.png", "joint_confidence.png", "reversed_trigger.png"):
        assert (tmp_path / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_without_backdoor_data_reports_only_false_positives(tiny_case: Path, tiny_artifacts: Path,
                                                                     tmp_path: Path):
    out = tmp_path / "eval.json"
    assert offline(["evaluate", "--artifacts", str(tiny_artifacts), "--clean-data", str(tiny_case / "test_clean.npz"),
                    "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "n_backdoor" not in report
    assert all(set(entry) == {"threshold_fpr"} for entry in report["rules"].values())


def test_bench_quick_runs_the_ci_matrix_and_renders_the_results_table(tiny_artifacts: Path, tmp_path: Path,
                                                                      capsys):
    from offline.cli import main as offline

    markdown, runs, records = tmp_path / "RESULTS.md", tmp_path / "runs", tmp_path / "records"
    assert offline(["bench", "--quick", "--out", str(runs), "--records", str(records), "--markdown",
                    str(markdown)]) == 0
    text = markdown.read_text()
    assert "## digits, resnet, width 8, 4 epochs (1 seed)" in text
    assert "| badnets | 1 |" in text and "| none | 1 |" in text
    assert "mean AUROC over 1 attack cells" in text and "achieved FPR on the clean model digits/resnet w8 e4" in text
    assert "](results.png)" in text and (tmp_path / "results.png").stat().st_size > 0
    report = json.loads((runs / "digits-badnets-resnet" / "eval.json").read_text())
    assert f"{report['rules']['firewall']['auroc']:.4f}" in text
    assert "--auxiliary" not in text

    # The tests' tiny case is poisoned at this badnets cell's settings (tests/conftest.py): poisoning and building
    # the cell again reproduces every graph and the thresholds to the byte, so two builds of a cell differ only in
    # what their settings change. The torch archives are left out: torch.export does not write them byte for byte.
    from offline.results_table import results_document

    def graphs(artifacts: Path) -> dict:
        files = json.loads((artifacts / "manifest.json").read_text())["files"]
        return {name: digest for name, digest in files.items() if not name.endswith(".pt2")}

    cell = runs / "digits-badnets-resnet" / "artifacts"
    assert graphs(cell) == graphs(tiny_artifacts) and "fused.onnx" in graphs(cell)
    assert (cell / "thresholds.json").read_bytes() == (tiny_artifacts / "thresholds.json").read_bytes()

    # The records kept beside runs/ (small files, to commit) render the same document, and a matrix whose runs/
    # is gone resumes from them instead of poisoning and building again.
    kept = sorted(str(p.relative_to(records)) for p in records.rglob("*") if p.is_file())
    assert kept == ["digits-badnets-resnet/artifacts/manifest.json", "digits-badnets-resnet/attack.json",
                    "digits-badnets-resnet/eval.json", "digits-none-resnet/artifacts/manifest.json",
                    "digits-none-resnet/attack.json", "digits-none-resnet/eval.json"]
    document = results_document(records)
    assert document == results_document(runs)
    shutil.rmtree(runs)
    capsys.readouterr()
    assert offline(["bench", "--quick", "--out", str(runs), "--records", str(records)]) == 0
    assert capsys.readouterr().err.count("measured already, reused") == 2
    assert not (runs / "digits-badnets-resnet").exists()
    assert sorted(str(p.relative_to(records)) for p in records.rglob("*") if p.is_file()) == kept
    assert results_document(records) == document


def test_bench_names_cells_poisoned_at_other_settings_after_those_settings():
    from offline.bench import BenchConfig, cell_dir

    matrix = BenchConfig(out=Path("runs"), datasets=("shapes",), archs=("vgg",), attacks=("all2all",))
    defaults = BenchConfig(out=Path("runs"), datasets=("shapes",), archs=("vgg",), attacks=("all2all",),
                           width=16, epochs=40)
    wider = BenchConfig(out=Path("runs"), datasets=("shapes",), archs=("vgg",), attacks=("all2all",), width=16)
    assert matrix.poison_settings("shapes") == {"width": 8, "epochs": 20}
    assert cell_dir(Path("runs"), "shapes", "all2all", "vgg", 0, matrix.settings_tag("shapes")).name == \
        "shapes-all2all-vgg"
    assert cell_dir(Path("runs"), "shapes", "all2all", "vgg", 2, defaults.settings_tag("shapes")).name == \
        "shapes-all2all-vgg-w16e40-s2"
    assert wider.poison_settings("shapes") == {"width": 16, "epochs": 20}
    assert wider.settings_tag("shapes") == "-w16e20"


def _sizes_naming(named: int | None) -> dict:
    """A target identification's mask sizes and threshold from which the build's rule names `named`."""
    sizes = [100.0 + c for c in range(10)]
    if named is not None:
        sizes[named] = 40.0
    return {"mask_sizes": sizes, "threshold": 2.0}


def test_bench_reuses_a_cell_only_if_its_build_was_made_the_way_this_run_would_make_it(tmp_path: Path):
    from offline.bench import BenchConfig, measured_already

    from firewall.artifacts import SCHEMA_VERSION

    from offline.build.identification_version import SIZE_AVERAGING

    def built(artifacts: str, report: str, auxiliary_method: str, schema: int = SCHEMA_VERSION,
              looked_for_target: bool = True, size_averaging: str | None = SIZE_AVERAGING,
              kept_trigger: bool = True, sizes: dict | None = None) -> None:
        (tmp_path / artifacts).mkdir(exist_ok=True)
        identification = {"suspected_target": None, **(sizes or _sizes_naming(None)),
                          **({"reversed_trigger": None} if kept_trigger else {}),
                          **({"size_averaging": size_averaging} if size_averaging else {})}
        manifest = {"schema_version": schema, "build": {"auxiliary_method": auxiliary_method},
                    "target_identification": identification if looked_for_target else None}
        (tmp_path / artifacts / "manifest.json").write_text(json.dumps(manifest))
        (tmp_path / report).write_text("{}")

    grid = {"out": tmp_path.parent, "datasets": ("digits",), "archs": ("resnet",), "attacks": ("badnets",)}
    built("artifacts", "eval.json", "finetune")  # a default build from before `both` became the default
    assert not measured_already(tmp_path, BenchConfig(**grid))
    built("artifacts", "eval.json", "both", schema=SCHEMA_VERSION - 1)  # built before a rule was added
    assert not measured_already(tmp_path, BenchConfig(**grid))
    built("artifacts", "eval.json", "both", looked_for_target=False)  # built before it looked for the target
    assert not measured_already(tmp_path, BenchConfig(**grid))
    built("artifacts", "eval.json", "both", size_averaging=None)  # read the last step's mask sizes (session 37)
    assert not measured_already(tmp_path, BenchConfig(**grid))
    built("artifacts", "eval.json", "both", kept_trigger=False)  # threw the reversed trigger away (sessions 38-39)
    assert not measured_already(tmp_path, BenchConfig(**grid))
    built("artifacts", "eval.json", "both", sizes=_sizes_naming(3))  # no name where builds now name class 3
    assert not measured_already(tmp_path, BenchConfig(**grid))
    built("artifacts", "eval.json", "both")
    assert measured_already(tmp_path, BenchConfig(**grid))
    assert not measured_already(tmp_path, BenchConfig(**grid, rebuild=True))
    assert not measured_already(tmp_path, BenchConfig(**grid, auxiliary="finetune"))
    built("artifacts-finetune", "eval-finetune.json", "finetune")
    assert measured_already(tmp_path, BenchConfig(**grid, auxiliary="finetune"))


def test_a_cell_whose_build_stops_half_way_keeps_no_evaluation_of_the_build_it_replaced(tmp_path: Path):
    from firewall.errors import UserError
    from offline.bench import run_cell

    case = tmp_path / "digits-badnets-resnet"
    case.mkdir()
    (case / "attack.json").write_text("{}")
    (case / "eval.json").write_text("{}")  # the evaluation of the build about to be replaced
    with pytest.raises(UserError):  # the build fails (here: no model), as a killed one would stop
        run_cell(case, "digits", "badnets", "resnet", 0, {}, repoison=False)
    assert not (case / "eval.json").exists()


def test_bench_recalibrates_only_a_build_it_would_have_made_and_builds_the_others(tmp_path: Path):
    from offline.bench import BenchConfig, recalibrates

    from firewall.artifacts import SCHEMA_VERSION

    from offline.build.identification_version import SIZE_AVERAGING

    def built(schema: int) -> None:
        (tmp_path / "artifacts").mkdir(exist_ok=True)
        manifest = {"schema_version": schema, "build": {"auxiliary_method": "both"},
                    "target_identification": {"suspected_target": 0, **_sizes_naming(0),
                                              "size_averaging": SIZE_AVERAGING,
                                              "reversed_trigger": "reversed_trigger.npz"}}
        (tmp_path / "artifacts" / "manifest.json").write_text(json.dumps(manifest))

    grid = {"out": tmp_path.parent, "datasets": ("digits",), "archs": ("resnet",), "attacks": ("badnets",)}
    assert not recalibrates(tmp_path, BenchConfig(**grid, recalibrate=True))  # nothing built yet
    built(SCHEMA_VERSION - 1)
    assert not recalibrates(tmp_path, BenchConfig(**grid, recalibrate=True))  # lacks a rule: built again
    built(SCHEMA_VERSION)
    assert recalibrates(tmp_path, BenchConfig(**grid, recalibrate=True))
    assert not recalibrates(tmp_path, BenchConfig(**grid))
    assert not recalibrates(tmp_path, BenchConfig(**grid, recalibrate=True, rebuild=True))


def test_kept_records_of_a_cell_poisoned_anew_are_replaced_not_mixed(tmp_path: Path):
    from offline.cells import keep_records

    def cell(model: str, evaluations: tuple[str, ...]) -> Path:
        case = tmp_path / "runs" / "shapes-sig-vgg"
        shutil.rmtree(case, ignore_errors=True)
        (case / "artifacts").mkdir(parents=True)
        (case / "attack.json").write_text(json.dumps({"model_sha256": model}))
        (case / "artifacts" / "manifest.json").write_text("{}")
        for name in evaluations:
            (case / name).write_text(json.dumps({"model": model}))
        return case

    records = tmp_path / "records"
    keep_records(cell("first", ("eval.json", "eval-finetune.json")), records)
    keep_records(cell("first", ("eval.json",)), records)  # the same model again: earlier records stay
    assert (records / "shapes-sig-vgg" / "eval-finetune.json").is_file()
    kept = keep_records(cell("second", ("eval.json",)), records)
    assert sorted(p.name for p in kept.iterdir()) == ["artifacts", "attack.json", "eval.json"]
    assert json.loads((kept / "eval.json").read_text()) == {"model": "second"}


def _firewall_cell(cells: Path, name: str, width: int = 16, epochs: int = 40, auroc: float = 0.99,
                   tpr: float = 0.5, asr: float = 0.5) -> None:
    """A benchmark record with only the firewall's verdict, as `offline bench` writes it."""
    case = cells / name
    case.mkdir()
    (case / "attack.json").write_text(json.dumps({"width": width, "epochs": epochs, "clean_accuracy": 0.9,
                                                  "attack_success_rate": asr}))
    rule = {"auroc": auroc, "tpr_at_fpr": {"0.01": tpr}, "threshold_fpr": 0.01}
    (case / "eval.json").write_text(json.dumps({"rules": {"firewall": rule}}))


def test_results_table_keeps_cells_poisoned_at_different_settings_in_separate_sections(tmp_path: Path):
    from offline.results_table import load_cells, render

    _firewall_cell(tmp_path, "shapes-all2all-vgg", 8, 20, auroc=0.87)
    _firewall_cell(tmp_path, "shapes-all2all-vgg-w16e40", 16, 40, auroc=0.99)
    _firewall_cell(tmp_path, "shapes-all2all-vgg-w16e40-s1", 16, 40, auroc=0.97)
    text = render(load_cells(tmp_path))
    small, full = text.split("## shapes, vgg, width 8, 20 epochs (1 seed)")[1].split(
        "## shapes, vgg, width 16, 40 epochs (2 seeds)")
    assert "0.8700" in small and "0.9800 ± 0.0100" in full
    assert "mean AUROC over 2 attack cells" in text and "worst: shapes/vgg w8 e20 all2all" in text


def test_results_table_names_the_cells_below_the_tpr_target_lowest_first_with_their_backdoors_strength(
        tmp_path: Path):
    from offline.results_table import load_cells, render

    _firewall_cell(tmp_path, "shapes-wanet-vgg-w16e40", tpr=0.60, asr=0.30)
    _firewall_cell(tmp_path, "shapes-dynamic-vgg-w16e40", tpr=0.40, asr=0.25)
    _firewall_cell(tmp_path, "shapes-sig-vgg-w16e40", tpr=1.00, asr=0.90)
    line = next(l for l in render(load_cells(tmp_path)).splitlines() if l.startswith("Attack cells below TPR 0.95"))
    assert line.index("shapes/vgg w16 e40 dynamic (0.400; ASR 0.25)") < line.index(
        "shapes/vgg w16 e40 wanet (0.600; ASR 0.30)")
    assert "sig" not in line

    for name in ("shapes-wanet-vgg-w16e40", "shapes-dynamic-vgg-w16e40"):
        shutil.rmtree(tmp_path / name)
    assert "Attack cells below TPR" not in render(load_cells(tmp_path))


def test_results_table_compares_a_named_build_only_on_the_cells_measured_both_ways(tmp_path: Path):
    from offline.results_table import results_document

    def cell(name: str, reports: dict[str, float]) -> None:
        case = tmp_path / name
        case.mkdir()
        (case / "attack.json").write_text(json.dumps({"width": 16, "epochs": 30, "clean_accuracy": 0.9,
                                                      "attack_success_rate": 0.5}))
        for file, auroc in reports.items():
            rule = {"auroc": auroc, "tpr_at_fpr": {"0.01": auroc / 2}, "threshold_fpr": 0.01}
            (case / file).write_text(json.dumps({"rules": {"firewall": rule}}))

    cell("digits-sig-resnet", {"eval.json": 0.90, "eval-both.json": 0.96})
    cell("digits-wanet-resnet", {"eval.json": 0.98})
    text = results_document(tmp_path)
    main, comparison = text.split("## The firewall built with `--auxiliary both`, against the default build")
    assert "mean AUROC over 2 attack cells | ≥ 0.99 | 0.9400 |" in main
    assert "| mean AUROC over 1 attack cells | ≥ 0.99 | 0.9000 | 0.9600 |" in comparison
    assert "| digits/resnet w16 e30 sig | 1 | 0.9000 / 0.450 / 0.010 | 0.9600 / 0.480 / 0.010 |" in comparison
    assert "wanet" not in comparison


def test_results_table_marks_the_cells_measured_on_an_earlier_build_and_says_what_each_build_named(tmp_path: Path):
    from firewall.artifacts import SCHEMA_VERSION
    from offline.build.identification_version import SIZE_AVERAGING
    from offline.results_table import load_cells, render

    def cell(name: str, schema: int, named: int | None | str = "not looked",
             size_averaging: str = SIZE_AVERAGING) -> None:
        case = tmp_path / name
        (case / "artifacts").mkdir(parents=True)
        (case / "attack.json").write_text(json.dumps({"attack": name.split("-")[1], "target": 0, "width": 16,
                                                      "epochs": 40, "clean_accuracy": 0.9,
                                                      "attack_success_rate": 0.5}))
        identification = (None if named == "not looked"
                          else {"suspected_target": named, **_sizes_naming(named), "size_averaging": size_averaging,
                                "reversed_trigger": None if named is None else "reversed_trigger.npz"})
        (case / "artifacts" / "manifest.json").write_text(json.dumps({"schema_version": schema,
                                                                      "target_identification": identification}))
        rule = {"auroc": 0.95, "tpr_at_fpr": {"0.01": 0.5}, "threshold_fpr": 0.01}
        rules = {"firewall": rule, **({"auxiliary_posterior": rule} if schema == SCHEMA_VERSION else {})}
        (case / "eval.json").write_text(json.dumps({"rules": rules}))

    cell("shapes-sig-vgg-w16e40", SCHEMA_VERSION, named=None)
    cell("shapes-dynamic-vgg-w16e40", SCHEMA_VERSION, named=0)
    cell("shapes-dynamic-vgg-w16e40-s1", SCHEMA_VERSION - 1)
    cell("shapes-wanet-vgg-w16e40", SCHEMA_VERSION - 1)
    cell("shapes-lowfreq-vgg-w16e40", SCHEMA_VERSION)  # the current schema, built before target identification
    cell("shapes-all2all-vgg-w16e40", SCHEMA_VERSION, named=2, size_averaging="last step")  # session 37's reading
    text = render(load_cells(tmp_path))
    assert f"earlier artifacts schema ({SCHEMA_VERSION - 1}; the current one is {SCHEMA_VERSION}) or that did not " \
           "look for the backdoor's target as builds now do" in text and ": 4 of the 6 cells" in text
    assert "| dynamic † | 2 (1 †) |" in text and "| wanet † | 1 |" in text and "| sig | 1 |" in text
    assert "| lowfreq † | 1 |" in text and "| all2all † | 1 |" in text
    assert "| 0.9500 / 0.500 / 0.010 (1 of 2 seeds) | –" in text.split("| dynamic † |")[1].split("\n")[0]
    assert "| 0 → 0, ? |" in text.split("| dynamic † |")[1].split("\n")[0]
    assert "| 0 → – |" in text.split("| sig |")[1].split("\n")[0]


def test_results_table_says_which_later_rules_the_verdict_ran_and_what_share_of_clean_inputs_paid(tmp_path: Path):
    from offline.results_table import load_cells, render

    def cell(name: str, cascade: dict) -> None:
        case = tmp_path / name
        case.mkdir()
        (case / "attack.json").write_text(json.dumps({"width": 16, "epochs": 30, "clean_accuracy": 0.9,
                                                      "attack_success_rate": 0.5}))
        rule = {"auroc": 0.99, "tpr_at_fpr": {"0.01": 0.5}, "threshold_fpr": 0.01}
        (case / "eval.json").write_text(json.dumps({"rules": {"firewall": rule}, "cascade": cascade}))

    first = ["badexpert", "exposed"]
    cell("digits-sig-resnet", {"rules": [*first, "strip_original", "strip"], "band_fraction": 0.1,
                               "clean_share_scored_by_later_rules": 0.04})
    cell("digits-blend-resnet", {"rules": [*first, "strip_original", "strip"], "band_fraction": 0.1,
                                 "clean_share_scored_by_later_rules": 0.06})
    cell("digits-wanet-resnet", {"rules": [*first, "strip"], "band_fraction": 0.0,
                                 "clean_share_scored_by_later_rules": 0.0})
    cell("digits-trojan-resnet", {"rules": [*first, "strip_original", "strip"], "band_fraction": 0.05,
                                  "later_rule_weights": {"strip_original": 0.5, "strip": 0.5},
                                  "clean_share_scored_by_later_rules": 0.045})
    text = render(load_cells(tmp_path))
    assert ("- 2 cells and seeds: the first stage with `strip_original` and `strip` in a 10% band, which 5.0% of the "
            "clean test inputs reached on average.") in text
    assert ("- 1 cells and seeds: the first stage with `strip_original` and `strip` at weight 0.5 in a 5% band, which "
            "4.5% of the clean test inputs reached on average.") in text
    assert "- 1 cells and seeds: the first stage alone (no band)." in text


def test_bench_reports_a_failing_cell_and_measures_the_cells_after_it(tmp_path: Path, monkeypatch):
    import offline.bench as bench
    from firewall.errors import UserError

    def cell(case: Path, dataset: str, attack: str, *args, **kwargs) -> dict:
        if attack == "sig":
            raise UserError("fused.onnx: the fused graph's badexpert scores differ from the rule's by 0.111")
        case.mkdir(parents=True)
        return {"rules": {"firewall": {"auroc": 0.99}}}

    monkeypatch.setattr(bench, "run_cell", cell)
    config = bench.BenchConfig(out=tmp_path, datasets=("digits",), archs=("resnet",), attacks=("sig", "wanet"))
    done, failed = bench.run_bench(config)
    assert [case.name for case in done] == ["digits-wanet-resnet"]
    assert "0.111" in failed["digits-sig-resnet"]
    assert json.loads((tmp_path / "bench.json").read_text())["failed"] == failed
