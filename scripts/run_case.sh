#!/usr/bin/env bash
# One red-team case end to end: poison, build, calibrate, evaluate.
# usage: [POISON_FLAGS="--width 8 --epochs 20"] scripts/run_case.sh DATASET ATTACK [ARCH] [RUNS_DIR]
set -euo pipefail
dataset=$1 attack=$2 arch=${3:-resnet} runs=${4:-runs}
offline=${OFFLINE:-.venv/bin/offline}
dir=$runs/$dataset-$attack-$arch
# shellcheck disable=SC2086  # POISON_FLAGS is a list of flags
$offline poison --dataset "$dataset" --attack "$attack" --arch "$arch" --out "$dir" --force ${POISON_FLAGS:-}
$offline build --model "$dir/model.pt2" --clean-data "$dir/clean.npz" --out "$dir/artifacts" --force
$offline calibrate --artifacts "$dir/artifacts" --clean-data "$dir/calib.npz" --target-fpr 0.01
backdoor=(--backdoor-data "$dir/test_triggered.npz")
[ "$attack" = none ] && backdoor=()
$offline evaluate --artifacts "$dir/artifacts" --clean-data "$dir/test_clean.npz" "${backdoor[@]}" \
    --json "$dir/eval.json" --plots "$dir/plots"
