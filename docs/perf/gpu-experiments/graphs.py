"""Captured CUDA graphs against uncaptured CUDA and the CPU, same artifacts, same inputs.

Checks that the replays give the scores an ordinary run gives (the first stage at batch
sizes on, between and beyond the captured ones; E on the cascade's 64 superimposed copies
of each input) and times the first stage both ways. Session 29; output in graphs.log.
usage: python docs/perf/gpu-experiments/graphs.py runs/untrained-resnet18
"""

import logging
import sys
import time
from pathlib import Path

import numpy as np

from firewall.artifacts import load_artifacts
from firewall.models import SessionTuning
from firewall.scoring import ScoringEngine

logging.basicConfig(level=logging.WARNING)
case = Path(sys.argv[1])
artifacts = load_artifacts(case / "artifacts")
pool = np.load(case / "test_clean.npz")["x"].astype(np.float32)
captured = ScoringEngine(artifacts)
uncaptured = ScoringEngine(artifacts, tuning=SessionTuning(cuda_graphs=False))
cpu = ScoringEngine(artifacts, providers=["CPUExecutionProvider"])
for engine in (captured, uncaptured):
    engine.first_stage(pool[:1], predict=False)
    engine.models.logits("exposed", pool[:1])
print("providers:", captured.models.providers, "| CUDA graphs:", captured.models.describe_capture())


def largest_gap(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(a[k] - b[k]) / (np.abs(b[k]) + 1e-3))) for k in b)


for n in (1, 3, 8, 13, 32, 40, 64):
    x = pool[:n]
    got, same, ref = (e.first_stage(x, predict=False) for e in (captured, uncaptured, cpu))
    print(f"first stage, {n:>2} inputs: captured vs uncaptured largest relative gap {largest_gap(got, same):.2e}, "
          f"vs CPU {largest_gap(got, ref):.2e}")
yhat = cpu.score(pool[:5], rules=("badexpert",))[0]
strip_got, strip_ref = (e.score(pool[:5], yhat=yhat, rules=("strip",))[1]["strip"] for e in (captured, cpu))
print(f"exposed STRIP (E on 64 superimposed copies of each of 5 inputs): captured vs CPU largest gap "
      f"{float(np.max(np.abs(strip_got - strip_ref))):.2e}")


def timed(engine: ScoringEngine, x: np.ndarray, calls: int = 300) -> tuple[float, float]:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        engine.first_stage(x, predict=False)
        times.append(time.perf_counter() - start)
    times = np.array(times[20:]) * 1e3
    return float(np.median(times)), float(np.percentile(times, 99))


for n in (1, 4, 8, 16, 32, 64):
    for label, engine in (("captured", captured), ("uncaptured", uncaptured)):
        p50, p99 = timed(engine, pool[:n])
        print(f"first stage without M, {n:>2} inputs, {label:<10}: p50 {p50:6.3f} ms  p99 {p99:6.3f} ms", flush=True)
