"""Render docs/RESULTS.md from the cells `offline bench` (or scripts/run_case.sh) left in a runs directory.

usage: python -m offline.results_table RUNS_DIR docs/RESULTS.md   (the document and results.png beside it)
       python -m offline.results_table RUNS_DIR                   (the document on stdout)
"""

from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from firewall.artifacts import SCHEMA_VERSION
from firewall.rules import LATER_RULES, RULES as RULE_REGISTRY, ExposedEntropyRule
from offline.build.identification_version import read_as_builds_now_do
from offline.build.target_naming import MIN_SEPARATION
from offline.cells import built_manifest, built_variants, eval_path

# The verdict, then every rule in the registry's order, but for the exposed model's STRIP
# entropy: a measurement that keeps the exposed STRIP rule honest (it is flat by design,
# firewall/rules/strip.py), not a detector a reader should compare.
RULES = ("firewall", *(rule for rule in RULE_REGISTRY if rule != ExposedEntropyRule.name))
TARGETS = {"mean_auroc": 0.99, "min_auroc": 0.97, "mean_tpr": 0.95, "fpr_slack": 0.01}
TARGET_FPR = 0.01  # what `offline bench` calibrates at
_CELL = re.compile(r"(?P<dataset>[a-z]+)-(?P<attack>[a-z0-9_]+)-(?P<arch>[a-z]+)(?:-w\d+e\d+)?(?:-s(?P<seed>\d+))?")

Group = tuple[str, str, int, int]  # dataset, arch, width, epochs: cells measured alike


def load_cells(runs: Path, auxiliary: str | None = None) -> dict[Group, dict[str, list[dict]]]:
    """{(dataset, arch, width, epochs): {attack: [one record per seed]}} for every cell evaluated with this build:
    the default one, or `--auxiliary <auxiliary>` (offline/cells.py)."""
    table: dict[Group, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for case in sorted(runs.iterdir()):
        match = _CELL.fullmatch(case.name)
        report_path = eval_path(case, auxiliary)
        if not match or not report_path.is_file() or not (case / "attack.json").is_file():
            continue
        attack = json.loads((case / "attack.json").read_text())
        report = json.loads(report_path.read_text())
        group = (match["dataset"], match["arch"], attack["width"], attack["epochs"])
        manifest = built_manifest(case, auxiliary) or {}
        table[group][match["attack"]].append({"attack": attack, "eval": report, "cell": case.name,
                                              "schema": manifest.get("schema_version"),
                                              "identification": manifest.get("target_identification")})
    return table


def _of_earlier_schema(record: dict) -> bool:
    return record["schema"] is not None and record["schema"] < SCHEMA_VERSION


def _of_earlier_build(record: dict) -> bool:
    """Measured on a build of an earlier artifacts schema, or on one that did not look for the backdoor's target
    as builds now do (before session 38): a matrix is rebuilt cell by cell over sessions, and such a cell reports
    the verdict of the default of its day, so the document must say which cells those are. The
    identification is judged as `offline bench` judges it, so a cell marked here is one the bench builds again."""
    return _of_earlier_schema(record) or (record["schema"] is not None
                                          and not read_as_builds_now_do(record["identification"]))


def _earlier_builds(records: list[dict]) -> int:
    return sum(map(_of_earlier_build, records))


def _suspected_targets(records: list[dict]) -> str:
    """The class each seed's build named as the backdoor's target ('–' none, '?' a build that did not look),
    after the attack's own target: what the `target_class` rule served."""
    named = ", ".join("?" if r["identification"] is None else
                      "–" if r["identification"]["suspected_target"] is None else
                      str(r["identification"]["suspected_target"]) for r in records)
    attack, target = records[0]["attack"].get("attack"), records[0]["attack"].get("target")
    attack_target = "–" if attack == "none" else str(target) if isinstance(target, int) else "all"
    return f"{attack_target} → {named}"


def _attack_label(attack: str, records: list[dict]) -> str:
    return f"{attack} †" if _earlier_builds(records) else attack


def _seeds_label(records: list[dict]) -> str:
    earlier = _earlier_builds(records)
    return f"{len(records)} ({earlier} †)" if 0 < earlier < len(records) else str(len(records))


def _mean_sd(values: list[float], digits: int = 3) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def _rule_cell(records: list[dict], rule: str) -> str:
    """Over the seeds whose build had the rule; where that is not all of them (a rule added since some
    were built), the cell says over how many."""
    entries = [e for r in records if (e := r["eval"]["rules"].get(rule))]
    if not entries:
        return "–"  # a rule these cells' builds did not have
    some = f" ({len(entries)} of {len(records)} seeds)" if len(entries) < len(records) else ""
    if all("auroc" in e for e in entries):
        return (f"{_mean_sd([e['auroc'] for e in entries], 4)} / {_mean_sd([e['tpr_at_fpr']['0.01'] for e in entries])}"
                f" / {_mean_sd([e['threshold_fpr'] for e in entries])}{some}")
    return f"FPR {_mean_sd([e['threshold_fpr'] for e in entries if 'threshold_fpr' in e])}{some}"


def _label(group: Group) -> str:
    dataset, arch, width, epochs = group
    return f"{dataset}/{arch} w{width} e{epochs}"


def _attack_success_rates(records: list[dict]) -> list[float]:
    """The seeds' ASRs, where defined (a clean model has none)."""
    return [r["attack"]["attack_success_rate"] for r in records if r["attack"]["attack_success_rate"] is not None]


def _firewall_rows(groups: Iterable[tuple[str, dict]]) -> tuple[list[tuple[str, float, float, float | None]],
                                                                 list[tuple[str, float]]]:
    """(name, AUROC, TPR at 1% FPR, ASR) per attack cell and (name, achieved FPR) per clean cell; seeds averaged."""
    attack_rows, clean_rows = [], []
    for label, attacks in groups:
        for attack, records in sorted(attacks.items()):
            entries = [r["eval"]["rules"]["firewall"] for r in records]
            if attack == "none":
                clean_rows.append((label, np.mean([e["threshold_fpr"] for e in entries])))
            elif all("auroc" in e for e in entries):
                asr = _attack_success_rates(records)
                attack_rows.append((f"{label} {_attack_label(attack, records)}".strip(),
                                    np.mean([e["auroc"] for e in entries]),
                                    np.mean([e["tpr_at_fpr"]["0.01"] for e in entries]),
                                    float(np.mean(asr)) if asr else None))
    return attack_rows, clean_rows


def group_summary(attacks: dict) -> str:
    """One line under a group's table: the targets' quantities over just these cells."""
    rows, _ = _firewall_rows([("", attacks)])
    if not rows:
        return ""
    if len(rows) == 1:
        (attack, auroc, tpr, _), = rows
        return f"Firewall on this one attack cell ({attack}): AUROC {auroc:.4f}, TPR at 1% FPR {tpr:.3f}."
    worst = min(rows, key=lambda r: r[1])
    return (f"Firewall over these {len(rows)} attack cells: mean AUROC {np.mean([r[1] for r in rows]):.4f}, "
            f"worst {worst[1]:.4f} ({worst[0]}), mean TPR at 1% FPR {np.mean([r[2] for r in rows]):.3f}.")


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def target_quantities(table: dict) -> dict | None:
    """The quantities the issue's targets are stated in, for the firewall's verdict over every attack cell."""
    attack_rows, clean_rows = _firewall_rows((_label(group), attacks) for group, attacks in sorted(table.items()))
    if not attack_rows:
        return None
    return {"cells": len(attack_rows), "mean_auroc": float(np.mean([r[1] for r in attack_rows])),
            "worst": min(attack_rows, key=lambda r: r[1])[:2], "mean_tpr": float(np.mean([r[2] for r in attack_rows])),
            "clean": clean_rows, "missed": [r for r in attack_rows if r[1] < TARGETS["min_auroc"]],
            "short_of_tpr": sorted((r for r in attack_rows if r[2] < TARGETS["mean_tpr"]), key=lambda r: r[2])}


def summary(table: dict) -> list[str]:
    """The issue's targets, for the firewall's verdict, over every attack cell measured."""
    q = target_quantities(table)
    if q is None:
        return []
    worst_name, worst = q["worst"]
    lines = ["## The firewall's verdict against the targets", "",
             "| target | wanted | measured | met |", "|---|---|---|---|",
             f"| mean AUROC over {q['cells']} attack cells | ≥ {TARGETS['mean_auroc']} | {q['mean_auroc']:.4f} | "
             f"{_met(q['mean_auroc'] >= TARGETS['mean_auroc'])} |",
             f"| AUROC on every attack (worst: {worst_name}) | ≥ {TARGETS['min_auroc']} | {worst:.4f} | "
             f"{_met(worst >= TARGETS['min_auroc'])} |",
             f"| mean TPR at 1% FPR | ≥ {TARGETS['mean_tpr']} | {q['mean_tpr']:.3f} | "
             f"{_met(q['mean_tpr'] >= TARGETS['mean_tpr'])} |"]
    for name, fpr in q["clean"]:
        lines.append(f"| achieved FPR on the clean model {name} (target {TARGET_FPR:.0%}) | within 1 point | "
                     f"{fpr:.4f} | {_met(abs(fpr - TARGET_FPR) <= TARGETS['fpr_slack'])} |")
    if q["missed"]:
        lines += ["", "Attack cells below AUROC " + f"{TARGETS['min_auroc']}: "
                  + ", ".join(f"{name} ({auroc:.3f})" for name, auroc, _, _ in q["missed"])
                  + ". docs/METHODS.md says what is known about why: \"The rules' ceiling\" (what any fusion of the rules "
                  "could reach), \"What the weak cells' backdoor sets hold\" (how much of a weak backdoor's set "
                  "is M's own errors), \"The width-8 shapes/VGG cells at three seeds\" (backdoors that half-took on "
                  "briefly trained models) and \"The vision transformer on digits\" (the architecture the rules do "
                  "worst on)."]
    if q["mean_tpr"] < TARGETS["mean_tpr"]:
        lines += ["", f"Attack cells below TPR {TARGETS['mean_tpr']} at 1% FPR, lowest first (TPR; the backdoor's "
                  "ASR, the share of triggered inputs M sent to the target): "
                  + ", ".join(f"{name} ({tpr:.3f}; ASR {'–' if asr is None else f'{asr:.2f}'})"
                              for name, _, tpr, asr in q["short_of_tpr"])
                  + ". The TPR counts the triggered inputs M sent to the target; where the backdoor took few, "
                  "some of those are M's own errors, not the trigger's doing. docs/METHODS.md measures how many "
                  "(a small part of the gap; the rest is a real miss) in \"What the weak cells' backdoor sets "
                  "hold\" and why those backdoors are weak in \"The width-8 shapes/VGG cells at three seeds\"."]
    return lines + [""]


def earlier_builds_note(table: dict) -> list[str]:
    """What † means, where any cell carries it."""
    records = [r for attacks in table.values() for rs in attacks.values() for r in rs]
    if not _earlier_builds(records):
        return []
    schemas = ", ".join(map(str, sorted({r["schema"] for r in records if _of_earlier_schema(r)})))
    why = " or ".join(([f"of an earlier artifacts schema ({schemas}; the current one is {SCHEMA_VERSION})"]
                       if schemas else [])
                      + ["that did not look for the backdoor's target as builds now do (built before session "
                         "37, its verdict has no `target_class` evidence; before session 38, its mask sizes "
                         "read at the last step; or before session 45, a class named where the next cheapest one's "
                         f"mask was within {MIN_SEPARATION - 1:.0%})"])
    return [f"† measured on a build {why}: {_earlier_builds(records)} of the {len(records)} cells and seeds. Such a "
            "cell reports the verdict of the default build of its day, and '–' under the rules added since; "
            "`make results` builds it again. The targets below count every cell as measured.", ""]


def cascade_note(table: dict) -> list[str]:
    """Which later rules the verdict ran, at what weight, in how wide a band, and what share of clean traffic
    paid for them, as each cell's evaluation recorded it: a matrix recalibrated over sessions may mix settings."""
    settings: dict[tuple[tuple[str, ...], float, tuple[float, ...] | None], list[float]] = defaultdict(list)
    for attacks in table.values():
        for records in attacks.values():
            for record in records:
                cascade = record["eval"].get("cascade", {})
                band = float(cascade.get("band_fraction", 0.0))
                later = tuple(rule for rule in cascade.get("rules", ()) if rule in LATER_RULES) if band > 0 else ()
                recorded = cascade.get("later_rule_weights")  # evaluations before session 24 did not record them
                weights = tuple(float(recorded[rule]) for rule in later) if later and recorded is not None else None
                settings[later, band, weights].append(float(cascade.get("clean_share_scored_by_later_rules", 0.0)))
    lines = []
    for (later, band, weights), shares in sorted(settings.items(), key=lambda item: -len(item[1])):
        at = ("" if weights is None else
              f" at weight {weights[0]:g}" if len(set(weights)) == 1 else
              " at weights " + ", ".join(f"{w:g}" for w in weights))
        ran = (f"the first stage with {' and '.join(f'`{rule}`' for rule in later)}{at} in a {band:.0%} band, which "
               f"{np.mean(shares):.1%} of the clean test inputs reached on average" if later
               else "the first stage alone (no band)")
        lines.append(f"- {len(shares)} cells and seeds: {ran}.")
    return ["The verdict's cascade, as the cells were calibrated (`offline calibrate --cascade-band`, "
            "`--later-rules`, `--later-rule-weight`):", "", *lines, ""] if lines else []


def _cell_names(table: dict) -> set[str]:
    return {r["cell"] for attacks in table.values() for records in attacks.values() for r in records}


def _only_cells(table: dict, names: set[str]) -> dict:
    return {group: kept for group, attacks in table.items()
            if (kept := {attack: [r for r in records if r["cell"] in names] for attack, records in attacks.items()
                         if any(r["cell"] in names for r in records)})}


def paired_builds(runs: Path, default: dict, auxiliary: str) -> tuple[dict, dict]:
    """The default build's table and the `--auxiliary <auxiliary>` build's, both cut to the cells measured both ways."""
    variant = load_cells(runs, auxiliary)
    names = _cell_names(variant) & _cell_names(default)
    return _only_cells(default, names), _only_cells(variant, names)


def variant_comparison(default: dict, variant: dict, auxiliary: str, figure: str | None = None) -> list[str]:
    """The firewall built with `--auxiliary <auxiliary>` against the default build (`paired_builds`' tables)."""
    base, other = target_quantities(default), target_quantities(variant)
    if base is None or other is None:
        return []
    flag = f"`--auxiliary {auxiliary}`"
    lines = [f"## The firewall built with {flag}, against the default build", "",
             f"The same poisoned models, built a second time with `offline build --auxiliary {auxiliary}` "
             f"(`offline bench --auxiliary {auxiliary}`), calibrated and evaluated alike; only cells measured "
             "both ways count here.", "",
             f"| target | wanted | default build | {flag} |", "|---|---|---|---|",
             f"| mean AUROC over {base['cells']} attack cells | ≥ {TARGETS['mean_auroc']} | {base['mean_auroc']:.4f} "
             f"| {other['mean_auroc']:.4f} |",
             f"| worst attack cell's AUROC | ≥ {TARGETS['min_auroc']} | {base['worst'][1]:.4f} ({base['worst'][0]}) "
             f"| {other['worst'][1]:.4f} ({other['worst'][0]}) |",
             f"| mean TPR at 1% FPR | ≥ {TARGETS['mean_tpr']} | {base['mean_tpr']:.3f} | {other['mean_tpr']:.3f} |"]
    lines += [f"| achieved FPR on the clean model {name} | {TARGET_FPR:.0%} ± 1 point | {fpr:.4f} | {fpr_other:.4f} |"
              for (name, fpr), (_, fpr_other) in zip(base["clean"], other["clean"])]
    lines += ["", *([f"![firewall AUROC per cell, default build and {flag}]({figure})", ""] if figure else []),
              f"Firewall cells (AUROC / TPR at 1% FPR / achieved FPR), default build and {flag}:", "",
              f"| cell | seeds | default build | {flag} |", "|---|---|---|---|"]
    for group, attacks in sorted(default.items()):
        for attack in sorted(attacks, key=lambda a: (a == "none", a)):
            both = attacks[attack] + variant[group][attack]  # † where either build is of an earlier schema
            lines.append(f"| {_label(group)} {_attack_label(attack, both)} | {len(attacks[attack])} | "
                         f"{_rule_cell(attacks[attack], 'firewall')} | "
                         f"{_rule_cell(variant[group][attack], 'firewall')} |")
    return lines + [""]


def auroc_matrix(table: dict) -> tuple[list[str], np.ndarray]:
    """(cell labels, [cells, RULES] mean AUROC over seeds, NaN where not measured) for every attack cell."""
    labels, rows = [], []
    for group, attacks in sorted(table.items()):
        for attack, records in sorted(attacks.items()):
            if attack == "none":
                continue
            labels.append(f"{_label(group)} {_attack_label(attack, records)}")
            rows.append([np.mean([r["eval"]["rules"][rule]["auroc"] for r in records])
                         if all("auroc" in r["eval"]["rules"].get(rule, {}) for r in records) else np.nan
                         for rule in RULES])
    return labels, np.array(rows, np.float64).reshape(len(rows), len(RULES))


def render(table: dict, figure: str | None = None, comparisons: Iterable[str] = ()) -> str:
    """The results document for `load_cells`' table; `figure`, if given, is the AUROC map's path relative to it;
    `comparisons` are `variant_comparison` sections, which close it."""
    lines = ["# Detection results", "",
             "Generated by `offline bench` (`make results`) or `python -m offline.results_table runs "
             "docs/RESULTS.md`; do not edit by hand. Each cell: `offline poison`, `build` at its defaults (learning "
             "rates chosen on clean data; both auxiliaries, so BaDExpert's rule twice: `badexpert` with the "
             "fine-tuned M', `badexpert_tsbd` with TSBD's), `calibrate` at 1% FPR on `calib.npz`, `evaluate` on "
             "`test_clean.npz` and on the triggered test inputs that M sends to the attack's target. Each section is one dataset, architecture "
             "and poisoning budget (the model's width and epochs); `offline poison`'s defaults are width 16 and "
             "40 epochs on shapes, which the issue's check uses, and the wider matrix runs shapes at width 8 and "
             "20 epochs to fit 2 cores. For `none` (a clean model) only the achieved FPR is defined.", "",
             "Rule cells: AUROC / TPR at 1% FPR (from the test ROC) / achieved FPR at the calibrated threshold; "
             "mean ± standard deviation where several seeds were run. `firewall` is the verdict the sidecar applies; "
             "the `strip` (exposed STRIP) and `strip_original` (STRIP on M) columns score every input, where the "
             "verdict runs them only for inputs in its cascade's band; `scaleup` (SCALE-UP) is a baseline. "
             "`target → suspected`: the attack's target class, then the class each seed's build named as the "
             "backdoor's target (`offline build`'s target identification; `–` none named, `?` a build that did not "
             "look), which the verdict's `target_class` evidence points at.", "",
             *earlier_builds_note(table),
             *cascade_note(table),
             *summary(table),
             *([f"![AUROC of every rule on every attack cell]({figure})", ""] if figure else [])]
    for (dataset, arch, width, epochs), attacks in sorted(table.items()):
        seeds = max(len(records) for records in attacks.values())
        lines += [f"## {dataset}, {arch}, width {width}, {epochs} epochs ({seeds} seed{'s' if seeds > 1 else ''})", "",
                  "| attack | seeds | clean acc | ASR | target → suspected | " + " | ".join(RULES) + " |",
                  "|---|---|---|---|---|" + "---|" * len(RULES)]
        for attack in sorted(attacks, key=lambda a: (a == "none", a)):
            records = attacks[attack]
            asr = _attack_success_rates(records)
            lines.append(f"| {_attack_label(attack, records)} | {_seeds_label(records)} | "
                         f"{_mean_sd([r['attack']['clean_accuracy'] for r in records])} "
                         f"| {_mean_sd(asr)} | {_suspected_targets(records)} | " + " | ".join(_rule_cell(records, rule) for rule in RULES) + " |")
        closing = group_summary(attacks)
        lines += ["", closing, ""] if closing else [""]
    return "\n".join(lines + list(comparisons)) + "\n"


def _overview_figure(table: dict, markdown: Path) -> str | None:
    from offline.plots import auroc_map

    labels, values = auroc_matrix(table)
    return auroc_map(labels, list(RULES), values, markdown.with_name("results.png")).name if labels else None


def _comparison_figure(default: dict, variant: dict, auxiliary: str, markdown: Path) -> str | None:
    from offline.plots import build_comparison

    cells, before = auroc_matrix(default)
    _, after = auroc_matrix(variant)
    if not cells:
        return None
    firewall = RULES.index("firewall")
    return build_comparison(cells, before[:, firewall], after[:, firewall], f"--auxiliary {auxiliary}",
                            TARGETS["min_auroc"], markdown.with_name(f"results-{auxiliary}.png")).name


def results_document(runs: Path, markdown: Path | None = None) -> str:
    """The results document for a runs directory: the default builds, then one comparison per named build
    (`offline bench --auxiliary X`). Written to `markdown`, with its figures (results.png, results-X.png) beside
    it, if given."""
    table = load_cells(runs)
    comparisons = []
    for auxiliary in sorted({v for case in runs.iterdir() if case.is_dir() for v in built_variants(case)}):
        default, variant = paired_builds(runs, table, auxiliary)
        figure = _comparison_figure(default, variant, auxiliary, markdown) if markdown else None
        comparisons += variant_comparison(default, variant, auxiliary, figure)
    document = render(table, _overview_figure(table, markdown) if markdown else None, comparisons)
    if markdown:
        markdown.write_text(document)
    return document


if __name__ == "__main__":
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs")
    sys.stdout.write(results_document(runs, Path(sys.argv[2]) if len(sys.argv) > 2 else None))
