#!/usr/bin/env bash
# The GPU half of docs/PERFORMANCE.md (issue 5): an untrained ResNet-18-sized artifacts
# set (latency does not depend on the weights' values), the engine on onnxruntime's CUDA
# provider against eager PyTorch on the GPU, and bare MLServer against MLServer behind
# the firewall with both models on the GPU, each also with the firewall's networks stacked
# (`offline build --stack-networks`). Fails rather than report a CPU fallback.
# usage: scripts/bench_gpu.sh PYTHON RUNS RECORDS
#   (writes RECORDS/bench-engine-gpu.json, bench-serving-gpu.json, bench-serving-gpu-stacked.json)
set -euo pipefail
py=${1:?usage: bench_gpu.sh PYTHON RUNS RECORDS} runs=${2:?} records=${3:?}
"$py" - <<'PY'
import sys
import onnxruntime as ort
if "CUDAExecutionProvider" not in ort.get_available_providers():
    sys.exit(f"error: onnxruntime {ort.__version__} offers no CUDA provider here; install onnxruntime-gpu")
PY
case=$runs/untrained-resnet18
test -f "$case/artifacts/thresholds.json" || "$py" -m offline.untrained_case "$case" --arch resnet18 --width 64 --force
# the same networks (the same seeds) with B, both M' and E stacked, timed beside them
stacked=$runs/untrained-resnet18-stacked
test -f "$stacked/artifacts/thresholds.json" || \
  "$py" -m offline.untrained_case "$stacked" --arch resnet18 --width 64 --stack-networks --force
mkdir -p "$records"
"$py" -m offline.bench_engine "$case" --device cuda --stacked "$stacked/artifacts" --json "$records/bench-engine-gpu.json"
for build in "$case" "$stacked"; do  # bench-serving-gpu.json, then bench-serving-gpu-stacked.json
  suffix=${build#"$case"}
  "$py" -m offline.bench_serving "$build" --configs issue --pinned-upstream-configs '' \
    --require-provider CUDAExecutionProvider --json "$records/bench-serving-gpu$suffix.json"
done
