"""`offline poison|build|quantize|calibrate|evaluate|bench`: flags in, one typed config per command out."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from firewall.artifacts import BY_CLASS_OUTPUTS, PRECISIONS
from firewall.errors import UserError, run_reporting_errors
from firewall.fusion import (DEFAULT_AUXILIARY_POSTERIOR_WEIGHT, DEFAULT_CASCADE_BAND, DEFAULT_LATER_RULE_WEIGHT,
                             DEFAULT_LATER_RULES, DEFAULT_WEIGHTS)
from firewall.rules import LATER_RULES

if TYPE_CHECKING:
    from offline.calibrate import CalibrateConfig

# The first-stage rules whose evidence weight `offline calibrate` takes as --<rule>-weight,
# and what their help calls that evidence. The later rules share --later-rule-weight.
_WEIGHTED_EVIDENCE = {
    "exposed": "the exposed margin's evidence",
    "mahalanobis": "the Mahalanobis rule's evidence",
    "layer_mahalanobis": "the layer-Mahalanobis rule's evidence (M's activations at six depths)",
    "spectrum_mahalanobis": "the spectrum rule's evidence (the input's own frequency content)",
    "expert_posterior": "the expert posterior's evidence (M's class under B's features)",
    "target_class": "the suspected target's evidence (M answers the class the build found the backdoor sends to)",
    "trigger_direction": "the trigger direction's evidence (M's features moved toward the suspected target the way "
                         "its reversed trigger moves them)",
}


def _weight_flag(rule: str) -> str:
    return f"--{rule.replace('_', '-')}-weight"


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _names(text: str) -> tuple[str, ...]:
    return tuple(v for v in text.split(",") if v)


def build_parser() -> argparse.ArgumentParser:
    from offline.attacks import ATTACKS
    from offline.build.pipeline import AUXILIARY_METHODS, DEFAULT_AUXILIARY, TARGET_IDENTIFICATION_STEPS
    from offline.data.splits import DATASETS
    from offline.models import ARCHITECTURES

    parser = argparse.ArgumentParser(prog="offline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("poison", help="train a (possibly) backdoored model and write its data splits")
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument("--attack", required=True, choices=sorted(ATTACKS))
    p.add_argument("--target", type=int, default=0,
                   help="the class triggered inputs are sent to (default 0; all2all sends y to y + 1 and takes none)")
    p.add_argument("--inference-alpha", type=float,
                   help="test-time opacity of a blended trigger (blend, adaptive_blend): a fainter trigger")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--arch", default="resnet", choices=sorted(ARCHITECTURES))
    p.add_argument("--width", type=int, default=16, help="channels of the first stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="default: 30 for digits, 40 for shapes")
    p.add_argument("--clean-size", type=int, default=300, help="size of the defender's clean set")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")

    b = sub.add_parser("build", help="build expert, auxiliary and exposed models and export the artifacts")
    b.add_argument("--model", required=True, help="model.pt2, or torchvision:<arch> with --weights")
    b.add_argument("--clean-data", required=True, type=Path)
    b.add_argument("--out", required=True, type=Path)
    b.add_argument("--name", default="classifier", help="the model name the upstream serves")
    b.add_argument("--auxiliary", default=DEFAULT_AUXILIARY, choices=AUXILIARY_METHODS,
                   help="how M' is made: large-rate clean fine-tuning, TSBD (reset what unlearning moved, then "
                        "fine-tune), or both, each scored by BaDExpert's rule at half weight (the default; "
                        "finetune scores one network less per request; docs/METHODS.md)")
    b.add_argument("--weights", type=Path, help="safetensors weights for torchvision:<arch>")
    b.add_argument("--input-shape", type=_ints, help="C,H,W for torchvision:<arch> (default 3,224,224)")
    b.add_argument("--input-mean", type=_floats, default=(0.0,), help="per-channel mean the inputs are normalised with")
    b.add_argument("--input-std", type=_floats, default=(1.0,), help="per-channel std the inputs are normalised with")
    b.add_argument("--shared-trunk", type=float, metavar="HEAD_SHARE",
                   help="fine-tune the expert, auxiliary and exposed model only in a head holding this share of "
                        "M's parameters (e.g. 0.9), so that the sidecar runs M's trunk once for all four; off by default: "
                        "it costs detection on some attacks (docs/METHODS.md)")
    b.add_argument("--stack-networks", action="store_true",
                   help="run B, the auxiliaries and E in the fused graphs as one network of grouped convolutions "
                        "(convolutional networks only; for GPUs, where the networks one after another are bound "
                        "by latency: docs/PERFORMANCE_NOTES.md); the scores are the same to float rounding")
    b.add_argument("--target-identification-steps", type=int, default=TARGET_IDENTIFICATION_STEPS, metavar="N",
                   help="look for the backdoor's target class: N optimisation steps per class of a reverse-engineered "
                        "trigger (default %(default)s; 0 does not look, and the suspected-target rule adds nothing)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--reuse-models", type=Path, metavar="ARTIFACTS",
                   help="take B, E and M' from this earlier build of the same model on the same clean data instead "
                        "of fine-tuning them again (after an upgrade changed the scoring graphs or the schema; "
                        "minutes instead of the fine-tunes' hours)")
    b.add_argument("--force", action="store_true", help="replace --out if it exists")

    c = sub.add_parser("calibrate", help="learn thresholds from clean data")
    c.add_argument("--artifacts", required=True, type=Path)
    c.add_argument("--clean-data", required=True, type=Path)
    c.add_argument("--target-fpr", type=float, default=0.01)
    c.add_argument("--cascade-band", type=float, default=DEFAULT_CASCADE_BAND,
                   help="share of clean calibration inputs for which the firewall also runs the later rules "
                        "(default %(default)s; 0: the first-stage rules alone, those of "
                        f"{', '.join(BY_CLASS_OUTPUTS)} that the build made; 1: the later rules on every input too)")
    c.add_argument("--later-rules", type=_names, default=DEFAULT_LATER_RULES,
                   help="comma-separated: the costly rules run inside the band, among strip_original (STRIP on M) "
                        "and strip (exposed STRIP); an empty string for none")
    for rule, evidence in _WEIGHTED_EVIDENCE.items():
        c.add_argument(_weight_flag(rule), type=float, default=DEFAULT_WEIGHTS[rule],
                       help=f"how much {evidence} counts in the verdict beside BaDExpert's (weight 1)")
    c.add_argument("--later-rule-weight", type=float, default=DEFAULT_LATER_RULE_WEIGHT,
                   help="how much each later rule's evidence counts in the band beside BaDExpert's (weight 1)")
    c.add_argument("--auxiliary-posterior-weight", type=float, default=DEFAULT_AUXILIARY_POSTERIOR_WEIGHT,
                   help="how much the auxiliary posterior's evidence counts in the verdict beside BaDExpert's "
                        "(weight 1); shared between the auxiliaries like BaDExpert's")
    c.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="the fused first-stage graph to score with, and so to serve: int8 needs `offline quantize` "
                        "first and is for CPUs (about 1.4x faster at large batches)")

    q = sub.add_parser("quantize", help="add int8 copies of the fused first-stage graphs, for CPU serving")
    q.add_argument("--artifacts", required=True, type=Path)
    q.add_argument("--clean-data", required=True, type=Path,
                   help="clean inputs the activations' int8 ranges are read off (the build's clean set)")
    q.add_argument("--force", action="store_true", help="quantize again where the int8 graphs exist")

    m = sub.add_parser("bench", help="run the detection matrix and regenerate the results table")
    m.add_argument("--out", type=Path, default=Path("runs"), help="where the cells go (reused when measured)")
    m.add_argument("--quick", action="store_true", help="the CI subset: digits, resnet, badnets and none, tiny models")
    m.add_argument("--datasets", type=_names, default=("digits", "shapes"))
    m.add_argument("--archs", type=_names, default=("resnet",))
    m.add_argument("--attacks", type=_names, default=tuple(a for a in sorted(ATTACKS) if a != "dynamic"),
                   help="default: every attack but dynamic, whose joint training doubles a cell's time")
    m.add_argument("--seeds", type=_ints, default=(0,))
    m.add_argument("--width", type=int, help="poison at this width instead of the matrix's (cells named -w<W>e<E>)")
    m.add_argument("--epochs", type=int, help="poison for this many epochs instead of the matrix's")
    m.add_argument("--auxiliary", choices=AUXILIARY_METHODS,
                   help="build every cell with M' made this way, kept beside the cell's default build "
                        "(artifacts-<auxiliary>/, eval-<auxiliary>.json); the results document compares the two")
    m.add_argument("--records", type=Path,
                   help="also keep each cell's measurement records here (attack.json, eval*.json, manifests; tens of KB), "
                        "and render the results document from them: a directory to commit (docs/cells), so the "
                        "matrix outlives runs/")
    m.add_argument("--markdown", type=Path, help="write the results document here (e.g. docs/RESULTS.md)")
    m.add_argument("--force", action="store_true", help="measure cells again from scratch, poisoning included")
    m.add_argument("--rebuild", action="store_true",
                   help="build, calibrate and evaluate again on each cell's existing poisoned model and data "
                        "(after a change to the build or the rules); cells without them are poisoned first")
    m.add_argument("--reuse-models", action="store_true",
                   help="with --rebuild: take each cell's fine-tuned models from its existing build "
                        "(`offline build --reuse-models`), for a change to the scoring graphs, not to the fine-tunes")
    m.add_argument("--recalibrate", action="store_true",
                   help="calibrate and evaluate again each cell's build in --out, if of the current artifacts "
                        "schema (after a change to calibration or to the verdict's arithmetic); other cells are "
                        "built as without it")

    e = sub.add_parser("evaluate", help="measure detection on clean and triggered data")
    e.add_argument("--artifacts", required=True, type=Path)
    e.add_argument("--clean-data", required=True, type=Path)
    e.add_argument("--backdoor-data", type=Path)
    e.add_argument("--json", dest="json_out", type=Path)
    e.add_argument("--plots", type=Path)
    return parser


def calibrate_config(args: argparse.Namespace) -> CalibrateConfig:
    """`offline calibrate`'s flags as the one config object calibration reads."""
    from offline.calibrate import CalibrateConfig

    weights = {**{rule: getattr(args, f"{rule}_weight") for rule in _WEIGHTED_EVIDENCE},
               **{rule: args.later_rule_weight for rule in LATER_RULES}}
    return CalibrateConfig(args.artifacts, args.clean_data, args.target_fpr, args.cascade_band, weights,
                           args.auxiliary_posterior_weight, args.later_rules, args.precision)


def run(args: argparse.Namespace) -> None:
    if args.command == "poison":
        from offline.poison import PoisonConfig, run_poison

        report = run_poison(PoisonConfig(dataset=args.dataset, attack=args.attack, out=args.out, arch=args.arch,
                                         width=args.width, seed=args.seed, epochs=args.epochs,
                                         clean_size=args.clean_size, target=args.target,
                                         inference_alpha=args.inference_alpha,
                                         force=args.force))
        asr = report["attack_success_rate"]
        print(f"{args.out}: clean accuracy {report['clean_accuracy']:.2%}, "
              f"attack success rate {'n/a' if asr is None else f'{asr:.2%}'}")
    elif args.command == "build":
        from offline.build.pipeline import BuildConfig, run_build

        manifest = run_build(BuildConfig(model=args.model, clean_data=args.clean_data, out=args.out, name=args.name,
                                         auxiliary=args.auxiliary, weights=args.weights, input_shape=args.input_shape,
                                         input_mean=args.input_mean, input_std=args.input_std,
                                         shared_trunk=args.shared_trunk, seed=args.seed,
                                         reuse_models=args.reuse_models, stack_networks=args.stack_networks,
                                         target_identification_steps=args.target_identification_steps,
                                         force=args.force))
        for role, info in manifest["models"].items():
            extra = f", {info['steps']} steps, stopped by {info['stopped_by']}" if "steps" in info else ""
            extra += " (reused)" if info.get("reused") else ""
            print(f"{role:<14} held-out clean accuracy {info['heldout_clean_accuracy']:.2%}{extra}")
        print(f"wrote {args.out}")
    elif args.command == "calibrate":
        from offline.calibrate import run_calibrate

        thresholds = run_calibrate(calibrate_config(args))
        print(f"scored with the {thresholds.precision} first-stage graph, which `firewall serve` will serve")
        for rule, t in thresholds.rules.items():
            print(f"{rule:<26} threshold {t.threshold:+.6g}  FPR on {t.n} clean: {t.fpr:.2%}")
        print(f"cascade: {thresholds.fusion.describe_band()}")
    elif args.command == "quantize":
        from offline.build.quantize import QuantizeConfig, run_quantize

        done = run_quantize(QuantizeConfig(args.artifacts, args.clean_data, args.force))
        agreement = done["agreement_on_calibration_rows"]
        for filename, nodes in done["nodes_quantized"].items():
            print(f"wrote {args.artifacts / filename}: {nodes} layers of B, M' and E in int8")
        print(f"on the {done['calibration_rows']} clean inputs: M's prediction unchanged on "
              f"{agreement['prediction_agreement']:.2%}; correlation of each rule's int8 score with its float score: "
              + ", ".join(f"{rule} {r:.4f}" for rule, r in agreement["score_correlation"].items()))
        print("serve it by calibrating on it: offline calibrate --precision int8 ...")
    elif args.command == "bench":
        from offline.attacks import ATTACKS
        from offline.bench import QUICK, BenchConfig, run_bench
        from offline.data.splits import DATASETS
        from offline.models import ARCHITECTURES
        from offline.results_table import results_document

        unknown = [a for a in args.attacks if a not in ATTACKS] + \
                  [a for a in args.archs if a not in ARCHITECTURES] + [d for d in args.datasets if d not in DATASETS]
        if unknown:
            raise UserError(f"unknown dataset, architecture or attack {unknown}")
        if args.reuse_models and not args.rebuild:
            raise UserError("--reuse-models rebuilds each cell around its fine-tuned models: add --rebuild")
        if args.quick and (args.width or args.epochs):
            raise UserError("--quick has its own tiny poison settings; drop --width/--epochs")
        grid = QUICK if args.quick else {"datasets": args.datasets, "archs": args.archs, "attacks": args.attacks,
                                         "seeds": args.seeds}
        _, failed = run_bench(BenchConfig(out=args.out, datasets=tuple(grid["datasets"]),
                                          archs=tuple(grid["archs"]), attacks=tuple(grid["attacks"]),
                                          seeds=tuple(grid["seeds"]), quick=args.quick, force=args.force,
                                          rebuild=args.rebuild, reuse_models=args.reuse_models,
                                          recalibrate=args.recalibrate, width=args.width,
                                          epochs=args.epochs, auxiliary=args.auxiliary, records=args.records))
        print(results_document(args.records or args.out, args.markdown))
        if failed:
            raise UserError(f"{len(failed)} cell(s) failed, the others are measured and rendered: "
                            + "; ".join(f"{name}: {why}" for name, why in failed.items()))
    elif args.command == "evaluate":
        from offline.evaluate import EvaluateConfig, format_table, run_evaluate

        report = run_evaluate(EvaluateConfig(args.artifacts, args.clean_data, args.backdoor_data,
                                             args.json_out, args.plots))
        print(format_table(report))
        if args.json_out is None and args.plots is None:
            return
        print(json.dumps({"json": str(args.json_out) if args.json_out else None,
                          "plots": str(args.plots) if args.plots else None}))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    return run_reporting_errors(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
