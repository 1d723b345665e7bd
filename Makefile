# Everything runs from a fresh clone: the first target that needs Python builds .venv.
#
# The torch story: torch and torchvision come from PyPI as one matched pair (the CUDA
# builds, which also run on CPU-only machines). The local CPU-only torch wheel is not
# used because no torchvision build imports against it. constraints.txt pins the pair:
# the same seed under another torch trains another model.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
OFFLINE := $(VENV)/bin/offline
STAMP := $(VENV)/.installed-offline
RUNS := runs

.PHONY: venv test demo results bench-serving bench-gpu performance-doc cascade-study int8-study protos clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --constraint constraints.txt -e '.[offline,test]'
	touch $(STAMP)

venv: $(STAMP)

test: venv
	$(PY) -m pytest -q

# The whole story on the bundled default: poison digits with BadNets, build the
# firewall's models, calibrate at 1% FPR, evaluate (table and plots), then serve the
# model with MLServer behind the firewall and send clean and triggered requests.
demo: venv
	OFFLINE=$(OFFLINE) scripts/run_case.sh digits badnets resnet $(RUNS)
	@echo "plots: $(RUNS)/digits-badnets-resnet/plots"
	$(PY) -m offline.demo $(RUNS)/digits-badnets-resnet

# Regenerates docs/RESULTS.md with `offline bench`: the 81 cells of docs/cells, no more.
# Digits on ResNet with 3 seeds and on the small vision transformer with 2, shapes on
# ResNet and on MobileNet with 3, issue 4's attacks on shapes/VGG at the matrix's small
# budget (width 8, 20 epochs) and at `offline poison`'s defaults (width 16, 40 epochs: the
# issue's check), both with 3 seeds. Cells already measured in runs/ are reused; from
# nothing this takes several hours on 2 cores. Each cell's measurement records (a few KB)
# are kept in docs/cells as it finishes, and the document is rendered from there: commit
# docs/cells, and an interrupted run loses nothing.
SHAPES_VGG_ATTACKS := wanet,sig,lowfreq,dynamic,adaptive_blend,all2all
RECORDS := docs/cells
DIGITS_ATTACKS := badnets,blend,sig,trojan,wanet,none
BENCH := $(OFFLINE) bench --out $(RUNS) --records $(RECORDS)
results: venv
	$(BENCH) --datasets digits --archs resnet --attacks $(DIGITS_ATTACKS) --seeds 0,1,2 > /dev/null
	$(BENCH) --datasets digits --archs vit --attacks $(DIGITS_ATTACKS) --seeds 0,1 > /dev/null
	$(BENCH) --datasets shapes --archs resnet --attacks badnets,blend,none --seeds 0,1,2 > /dev/null
	$(BENCH) --datasets shapes --archs mobilenet --attacks badnets,none --seeds 0,1,2 > /dev/null
	$(BENCH) --datasets shapes --archs vgg --attacks $(SHAPES_VGG_ATTACKS) --seeds 0,1,2 > /dev/null
	$(BENCH) --datasets shapes --archs vgg --attacks $(SHAPES_VGG_ATTACKS) --width 16 --epochs 40 \
	  --seeds 0,1,2 > /dev/null
	$(PY) -m offline.results_table $(RECORDS) docs/RESULTS.md > /dev/null

# Regenerates docs/PERFORMANCE.md: the engine against eager PyTorch, then bare MLServer
# against MLServer behind the firewall in each configuration, the same tritonclient load
# at concurrency 1, 8 and 32, and the issue's configuration again against an upstream
# pinned to one onnxruntime thread (about 14 minutes; run it alone on the machine). The
# case is quantized (`offline quantize`, additive) so that the int8 first stage is
# measured beside the float one. The measurements are kept in docs/perf/ (the GPU ones
# come from `make bench-gpu`).
PERF := docs/perf
DEMO_CASE := $(RUNS)/digits-badnets-resnet
# builds the demo case again only when its artifacts are missing, fail their checks (an older
# schema, a changed file) or are not calibrated
bench-serving: venv
	$(PY) -c 'import sys; from firewall.artifacts import load_artifacts; load_artifacts(sys.argv[1])' \
	  $(DEMO_CASE)/artifacts 2> /dev/null && test -f $(DEMO_CASE)/artifacts/thresholds.json || \
	  OFFLINE=$(OFFLINE) scripts/run_case.sh digits badnets resnet $(RUNS)
	test -f $(DEMO_CASE)/artifacts/fused.int8.onnx || \
	  $(OFFLINE) quantize --artifacts $(DEMO_CASE)/artifacts --clean-data $(DEMO_CASE)/clean.npz
	# the stacked copy, built again every run (30 s) so that it is never an older build's
	$(OFFLINE) build --model $(DEMO_CASE)/model.pt2 --clean-data $(DEMO_CASE)/clean.npz \
	  --out $(DEMO_CASE)/artifacts-stacked --reuse-models $(DEMO_CASE)/artifacts --stack-networks --force
	$(PY) -m offline.bench_engine $(DEMO_CASE) --stacked $(DEMO_CASE)/artifacts-stacked --json $(PERF)/bench-engine.json
	$(PY) -m offline.bench_serving $(DEMO_CASE) --json $(PERF)/bench-serving.json
	$(MAKE) performance-doc

# The GPU half, on a machine with an NVIDIA GPU and onnxruntime-gpu in .venv in place of
# onnxruntime (`.venv/bin/pip uninstall -y onnxruntime && .venv/bin/pip install
# onnxruntime-gpu`, with CUDA 13 and cuDNN 9 where it can load them): an untrained
# ResNet-18-sized artifacts set built twice (the second with --stack-networks), the engine
# against eager PyTorch on the GPU, and the issue's serving configuration on each build with
# both servers on the GPU (about 12 minutes on an H100 with 16 cores, from its parts' times
# in session 36, which ran them one by one).
bench-gpu: venv
	scripts/bench_gpu.sh $(PY) $(RUNS) $(PERF)
	$(MAKE) performance-doc

GPU_REPORTS = $(if $(wildcard $(PERF)/bench-engine-gpu.json),--gpu-engine $(PERF)/bench-engine-gpu.json) \
              $(if $(wildcard $(PERF)/bench-serving-gpu.json),--gpu-serving $(PERF)/bench-serving-gpu.json) \
              $(if $(wildcard $(PERF)/bench-serving-gpu-stacked.json),--gpu-serving-stacked $(PERF)/bench-serving-gpu-stacked.json)
performance-doc: venv
	$(PY) -m offline.performance_report $(PERF)/bench-engine.json $(PERF)/bench-serving.json $(GPU_REPORTS) \
	  > docs/PERFORMANCE.md

# Regenerates docs/CASCADE.md from the cases `make results` left in runs/ (40-70 seconds a
# case on 2 cores, an hour for the 70 attack cases; each case's scores are kept in
# runs/.scores and scored again only when the case, the scoring code or onnxruntime changed:
# from the cache the whole study takes seconds).
cascade-study: venv
	$(PY) -m offline.cascade_study --scores $(RUNS)/.scores $(RUNS)/*/ > docs/CASCADE.md

# Regenerates docs/INT8.md (the int8 first stage's detection against the float one) from
# the same cases (about 5 minutes on 2 cores once the cascade study has scored them in
# float: only the first stage is scored again, in int8; its scores are kept in runs/.scores
# too).
int8-study: venv
	$(PY) -m offline.precision_study --scores $(RUNS)/.scores $(RUNS)/*/ > docs/INT8.md

# Regenerates firewall/protocol/ from protos/ (a test fails when they drift apart).
protos: venv
	PYTHON=$(PY) scripts/gen_protos.sh

clean:
	rm -rf $(VENV) $(RUNS)
