"""`offline evaluate`: how well each rule separates clean from backdoor inputs.

The backdoor set counts only inputs on which M predicts the attack's target (the
attack succeeded), as the papers do: a triggered input M classifies correctly
anyway is no threat to reject.

Beside the pooled numbers the report breaks the verdict down by the class M predicts:
the share of each class's clean inputs the firewall rejects, and each rule's AUROC
against clean inputs of the backdoor's own class. A backdoored model's false positives
gather in its target class (the rules' models lean toward it on clean inputs too), which
an operator sees as one class's traffic rejected more, and a pooled AUROC hides how much
of a rule's separation is only "this input went to the target class".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from firewall.artifacts import REVERSED_TRIGGER, THRESHOLDS, load_artifacts
from firewall.rules import BadExpertRule
from firewall.scoring import FIREWALL, ScoringEngine
from firewall.thresholds import Thresholds
from offline.build.reversed_trigger import ReversedTrigger
from offline.calibrate import every_rule
from offline.data.tensorsets import load_tensor_set
from offline.metrics import auroc, rate_above, rates_above_by_class, same_class_auroc, tpr_at_fpr

REPORTED_FPRS = (0.01, 0.05)


@dataclass(frozen=True)
class EvaluateConfig:
    artifacts: Path
    clean_data: Path
    backdoor_data: Path | None = None
    json_out: Path | None = None
    plots: Path | None = None


def _confidences(engine: ScoringEngine, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rule = BadExpertRule()
    pairs = [rule.confidences(batch) for batch in engine.batches(x)]
    return np.concatenate([b for b, _ in pairs]), np.concatenate([a for _, a in pairs])


def run_evaluate(config: EvaluateConfig) -> dict:
    artifacts = load_artifacts(config.artifacts)
    thresholds = Thresholds.load(artifacts.path(THRESHOLDS))
    manifest = artifacts.manifest
    check = {"num_classes": manifest.num_classes, "input_shape": manifest.input_shape}
    clean = load_tensor_set(config.clean_data, **check)
    engine = ScoringEngine(artifacts, rules=every_rule(artifacts), precision=thresholds.precision)
    rule_names = [*engine.rule_names, FIREWALL]
    thresholds.require(rule_names)

    def score(x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        predictions, scores = engine.score(x)
        scores[FIREWALL] = thresholds.fused(scores)
        return predictions, scores

    clean_pred, clean_scores = score(clean.x)
    fusion = thresholds.fusion
    weights = fusion.weight_of_each_rule()
    report: dict = {"n_clean": len(clean), "clean_accuracy": float((clean_pred == clean.y).mean()),
                    "cascade": {"rules": list(fusion.rules), "band_fraction": fusion.band_fraction,
                                "later_rule_weights": {rule: weights[rule] for rule in fusion.later},
                                "clean_share_scored_by_later_rules":
                                    float(fusion.needs_later(clean_scores).mean())},
                    "clean_by_predicted_class": np.bincount(clean_pred, minlength=manifest.num_classes).tolist(),
                    "firewall_fpr_by_predicted_class": rates_above_by_class(
                        clean_scores[FIREWALL], clean_pred, thresholds.rules[FIREWALL].threshold, manifest.num_classes),
                    "rules": {}}

    backdoor_scores = None
    if config.backdoor_data is not None:
        triggered = load_tensor_set(config.backdoor_data, require_target=True, **check)
        pred, scores = score(triggered.x)
        hit = pred == triggered.target
        report["n_backdoor"] = int(hit.sum())
        report["n_triggered"] = len(triggered)
        report["attack_success_rate"] = float(hit.mean())
        backdoor_scores = {rule: s[hit] for rule, s in scores.items()}
        backdoor_classes = pred[hit]
        report["target_classes"] = np.unique(backdoor_classes).tolist()

    for rule in rule_names:
        threshold = thresholds.rules[rule].threshold
        entry = {"threshold_fpr": rate_above(clean_scores[rule], threshold)}
        if backdoor_scores is not None and len(backdoor_scores[rule]):
            c, b = clean_scores[rule], backdoor_scores[rule]
            entry = {"auroc": auroc(c, b), "auroc_same_class": same_class_auroc(c, clean_pred, b, backdoor_classes),
                     "tpr_at_fpr": {str(f): tpr_at_fpr(c, b, f) for f in REPORTED_FPRS},
                     "threshold_fpr": entry["threshold_fpr"], "threshold_tpr": rate_above(b, threshold)}
        report["rules"][rule] = entry

    if config.json_out is not None:
        Path(config.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(config.json_out).write_text(json.dumps(report, indent=2))
    if config.plots is not None:
        from offline.plots import write_plots

        joint = None
        if backdoor_scores is not None and report["n_backdoor"]:
            hit_x = triggered.x[hit]
            joint = (_confidences(engine, clean.x), _confidences(engine, hit_x))
        trigger = (ReversedTrigger.load(artifacts.path(REVERSED_TRIGGER))
                   if REVERSED_TRIGGER in manifest.files else None)
        write_plots(Path(config.plots), clean_scores, backdoor_scores, thresholds, joint, trigger)
    return report


def format_table(report: dict) -> str:
    lines = [f"clean inputs: {report['n_clean']} (M accuracy {report['clean_accuracy']:.2%})"]
    if "n_backdoor" in report:
        lines.append(f"backdoor inputs: {report['n_backdoor']} of {report['n_triggered']} triggered "
                     f"(attack success rate {report['attack_success_rate']:.2%})")
    lines.append(f"{'rule':<26}{'AUROC':>8}{'in-class':>9}{'TPR@1%':>9}{'TPR@5%':>9}{'FPR@thr':>9}{'TPR@thr':>9}")
    fmt = lambda v: f"{v:>9.3f}" if v is not None else f"{'-':>9}"
    for rule, entry in report["rules"].items():
        tpr = entry.get("tpr_at_fpr", {})
        auc = entry.get("auroc")
        lines.append(f"{rule:<26}{(f'{auc:>8.4f}' if auc is not None else f'{chr(45):>8}')}"
                     f"{fmt(entry.get('auroc_same_class'))}{fmt(tpr.get('0.01'))}{fmt(tpr.get('0.05'))}"
                     f"{fmt(entry['threshold_fpr'])}{fmt(entry.get('threshold_tpr'))}")
    lines.append("(in-class: AUROC against clean inputs of the class M gives the backdoor input)")
    lines.append(_by_class_line(report))
    return "\n".join(lines)


def _by_class_line(report: dict) -> str:
    """The firewall's false positives class by class, the backdoor's target classes marked."""
    targets = set(report.get("target_classes", ()))
    cells = [f"{k}{'*' if k in targets else ''}: {rate:.1%} of {n}"
             for k, (rate, n) in enumerate(zip(report["firewall_fpr_by_predicted_class"],
                                               report["clean_by_predicted_class"])) if n]
    legend = " (* the backdoor's target)" if targets else ""
    return f"firewall FPR by the class M predicts{legend}: " + ", ".join(cells)
