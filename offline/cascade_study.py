"""What the cascade buys and costs: the fused verdict with each choice of later rules and band.

For every case directory (as `offline bench` or `scripts/run_case.sh` leave them) every
rule the verdict can fuse is scored once on the calibration, clean test and triggered
test sets; then for each setting (which costly rules run inside the band, how wide the
band is, and what the later rules' evidence weighs) the fusion and its threshold are
fitted on the calibration set alone, exactly as `offline calibrate --later-rules R
--cascade-band F --later-rule-weight W` does, and measured on the test sets. The band is
also the cost: the share of clean inputs that pay for 64 superimposed forward passes per
later rule.

Scoring is nearly all the time (about a minute a shapes case on 2 cores); with
`--scores DIR` each case's scores are kept in DIR/<case>.npz and read back on the next
run, so that the settings can be changed and measured again in seconds. An entry is read
back only while the case, the scoring code and onnxruntime are what it was scored with
(`case_digest`); a case built or poisoned again is scored again.

usage: python -m offline.cascade_study [--scores DIR] CASE_DIR... > docs/CASCADE.md
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

import firewall
import offline.build.quantize
from firewall.artifacts import BY_CLASS_OUTPUTS, MANIFEST, load_artifacts, sha256_file
from firewall.fusion import DEFAULT_CASCADE_BAND, DEFAULT_LATER_RULE_WEIGHT, DEFAULT_LATER_RULES, DEFAULT_WEIGHTS
from firewall.rules import LATER_RULES
from firewall.scoring import ScoringEngine
from firewall.thresholds import fit_threshold
from offline.calibrate import fit_fusion
from offline.metrics import auroc, rate_above, tpr_at_fpr

TARGET_FPR = 0.01


@dataclass(frozen=True)
class Setting:
    later_rules: tuple[str, ...]
    band: float
    weight: float = DEFAULT_LATER_RULE_WEIGHT  # of each later rule's evidence, beside BaDExpert's 1

    @property
    def label(self) -> str:
        if not self.later_rules or self.band == 0.0:
            return "first stage alone"
        names = {"strip_original": "STRIP on M", "strip": "exposed STRIP"}
        return f"{' + '.join(names[r] for r in self.later_rules)}, band {self.band:g}, weight {self.weight:g}"

    @property
    def weights(self) -> dict[str, float]:
        return {**DEFAULT_WEIGHTS, **{rule: self.weight for rule in self.later_rules}}


FIRST_STAGE_ALONE = Setting((), 0.0)
SCORING_CODE = (*sorted(Path(firewall.__file__).parent.rglob("*.py")), Path(offline.build.quantize.__file__))
DEFAULT = Setting(DEFAULT_LATER_RULES, DEFAULT_CASCADE_BAND) if DEFAULT_CASCADE_BAND > 0 else FIRST_STAGE_ALONE
BOTH = LATER_RULES
SETTINGS = tuple(dict.fromkeys((FIRST_STAGE_ALONE,
                                *(Setting(("strip_original",), band) for band in (0.05, 0.1, 0.2, 1.0)),
                                Setting(("strip",), 0.05),
                                *(Setting(BOTH, band, weight) for weight in (1.0, 0.5) for band in (0.05, 0.1, 0.2)),
                                DEFAULT)))


@dataclass(frozen=True)
class CaseScores:
    """Every rule's scores on the calibration set, the clean test set and the triggered test
    inputs the backdoor succeeded on."""
    first_stage_rules: tuple[str, ...]
    calib: dict[str, np.ndarray]
    clean: dict[str, np.ndarray]
    backdoor: dict[str, np.ndarray]

    PARTS = ("calib", "clean", "backdoor")

    def save(self, path: Path, source: str) -> None:
        np.savez(path, first_stage_rules=np.array(self.first_stage_rules), source=np.array(source),
                 **{f"{part}/{rule}": values for part in self.PARTS for rule, values in getattr(self, part).items()})

    @classmethod
    def load(cls, path: Path) -> "CaseScores":
        with np.load(path, allow_pickle=False) as stored:
            return cls._read(stored)

    @classmethod
    def _read(cls, stored: Mapping[str, np.ndarray]) -> "CaseScores":
        parts = {part: {key.split("/", 1)[1]: stored[key] for key in stored if key.startswith(f"{part}/")}
                 for part in cls.PARTS}
        return cls(tuple(str(rule) for rule in stored["first_stage_rules"]), **parts)

    @classmethod
    def cached(cls, path: Path | None, case: Path, compute: Callable[[], "CaseScores"],
               code: tuple[Callable, ...]) -> "CaseScores":
        """The scores stored at `path` if they were made from the case and `code` (the study's
        functions `compute` scores with) as they are now, else `compute()`'s, stored there (no
        cache when `path` is None): scoring is nearly all of a study's time. Only the scoring
        functions enter the digest, not their modules, so that a study's settings and tables
        can change without scoring the matrix again."""
        if path is None:
            return compute()
        source = case_digest(case, code)
        if path.is_file():
            with np.load(path, allow_pickle=False) as stored:
                if "source" in stored and str(stored["source"]) == source:
                    return cls._read(stored)
        scores = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        scores.save(path, source)
        return scores


def case_digest(case: Path, code: tuple[Callable, ...]) -> str:
    """One digest of what a case's scores are made from: its artifacts' manifest (which pins
    every model file by its digest), its data sets (clean.npz is what int8 quantization
    calibrates on), and the code that scores and quantizes (the firewall package, the
    quantizer and the study's own scoring functions, `code`) with the onnxruntime it runs on."""
    digest = hashlib.sha256(ort.__version__.encode())
    for path in (case / "artifacts" / MANIFEST, case / "clean.npz", case / "calib.npz", case / "test_clean.npz",
                 case / "test_triggered.npz", *SCORING_CODE):
        digest.update((sha256_file(path) if path.is_file() else f"no {path.name}").encode())
    for function in code:
        digest.update(inspect.getsource(function).encode())
    return digest.hexdigest()


def score_case(case: Path, cache: Path | None = None) -> CaseScores:
    """The case's scores, from the cache when it holds them (and into it when it does not)."""
    def compute() -> CaseScores:
        engine = ScoringEngine(load_artifacts(case / "artifacts"))  # every rule the verdict can fuse
        return scores_with(engine, case, engine.first_stage_rules)
    return CaseScores.cached(cache / f"{case.name}.npz" if cache else None, case, compute, (score_case, scores_with))


def scores_with(engine: ScoringEngine, case: Path, first_stage_rules: tuple[str, ...]) -> CaseScores:
    """The engine's scores on the case's calibration set, its clean test set and the triggered
    test inputs M sends to the target (the backdoor inputs that succeed)."""
    calib = engine.score(np.load(case / "calib.npz")["x"])[1]
    clean = engine.score(np.load(case / "test_clean.npz")["x"])[1]
    triggered = np.load(case / "test_triggered.npz")
    predictions, backdoor = engine.score(triggered["x"])
    hit = predictions == triggered["target"]
    return CaseScores(first_stage_rules, calib, clean, {rule: values[hit] for rule, values in backdoor.items()})


def attack_cases(directories: list[Path]) -> list[Path]:
    """The directories that hold an attack case (a clean model's has no backdoor to measure)."""
    return [case for case in directories if (case / "attack.json").is_file()
            and json.loads((case / "attack.json").read_text())["attack"] != "none"]


def measure(scores: CaseScores) -> dict[Setting, dict]:
    rows = {}
    for setting in SETTINGS:
        fusion = fit_fusion(scores.calib, scores.first_stage_rules, setting.later_rules, setting.band,
                            setting.weights)
        threshold = fit_threshold(fusion.fuse(scores.calib), TARGET_FPR).threshold
        c, b = fusion.fuse(scores.clean), fusion.fuse(scores.backdoor)
        rows[setting] = {"auroc": auroc(c, b), "tpr_at_1": tpr_at_fpr(c, b, TARGET_FPR),
                         "fpr": rate_above(c, threshold), "tpr": rate_above(b, threshold),
                         "clean_share": float(fusion.needs_later(scores.clean).mean()),
                         "backdoor_share": float(fusion.needs_later(scores.backdoor).mean())}
    return rows


def study(case: Path, cache: Path | None = None) -> dict[Setting, dict]:
    return measure(score_case(case, cache))


def to_markdown(results: dict[str, dict[Setting, dict]]) -> str:
    cases = list(results)
    lines = ["# The cascade: which costly rules run in the band, and how wide the band is", "",
             "Generated by `python -m offline.cascade_study CASE_DIR... > docs/CASCADE.md` over the cases in the "
             "tables (`make cascade-study` runs it on every attack cell under runs/); do not edit by hand. "
             f"The first stage (one fused graph: {', '.join(f'`{rule}`' for rule in BY_CLASS_OUTPUTS)}) "
             "scores every input; the later rules, STRIP on M "
             "(`strip_original`) and exposed STRIP (`strip`), 64 superimposed copies each, run only for inputs whose first-stage evidence is in "
             "the band. Rules fused by summing their clean-tail evidence times their weights (firewall/fusion.py; "
             "`weight` is each later rule's); fusion and "
             f"threshold fitted on calib.npz at {TARGET_FPR:.0%} FPR, measured on the test sets. "
             f"The default is **{DEFAULT.label}**. `clean share` is the share of clean test inputs that run the "
             "later rules, i.e. the cost; `backdoor share` the share of successful triggered inputs that reach "
             "them.", "",
             "Mean over the cases:", "",
             "| setting | mean AUROC | worst AUROC | mean TPR@1% | FPR at threshold | TPR at threshold | clean share "
             "| backdoor share |",
             "|---|---|---|---|---|---|---|---|"]
    for setting in SETTINGS:
        rows = [results[case][setting] for case in cases]
        worst = min(range(len(cases)), key=lambda i: rows[i]["auroc"])
        mean = lambda key: float(np.mean([r[key] for r in rows]))
        lines.append(f"| {setting.label} | {mean('auroc'):.4f} | {rows[worst]['auroc']:.4f} ({cases[worst]}) | "
                     f"{mean('tpr_at_1'):.3f} | {mean('fpr'):.4f} | {mean('tpr'):.3f} | {mean('clean_share'):.1%} | "
                     f"{mean('backdoor_share'):.1%} |")
    lines += ["", "AUROC / TPR at 1% FPR per case:", "",
              "| case | " + " | ".join(s.label for s in SETTINGS) + " |",
              "|---|" + "---|" * len(SETTINGS)]
    for case in cases:
        lines.append(f"| {case} | " + " | ".join(f"{results[case][s]['auroc']:.4f} / {results[case][s]['tpr_at_1']:.3f}"
                                                 for s in SETTINGS) + " |")
    return "\n".join(lines) + "\n"


def parse_case_arguments(prog: str, description: str, scores_help: str) -> tuple[Path | None, list[Path]]:
    """(the scores cache, the attack cases) from a study's command line: `[--scores DIR] CASE_DIR...`."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--scores", type=Path, help=scores_help)
    parser.add_argument("cases", type=Path, nargs="+", help="case directories; clean-model cases are skipped")
    args = parser.parse_args()
    cases = attack_cases(args.cases)
    if not cases:
        parser.error("no attack case among the directories given (each needs an attack.json)")
    return args.scores, cases


def main() -> int:
    cache, cases = parse_case_arguments("cascade_study", __doc__.splitlines()[0],
                                        "keep each case's scores in DIR/<case>.npz and reuse them")
    results = {}
    for case in cases:
        results[case.name] = study(case, cache)
        print(f"{case.name} done", file=sys.stderr, flush=True)
    print(to_markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
