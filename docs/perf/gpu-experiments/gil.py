"""Does the sidecar's event loop keep running while its scoring thread waits on onnxruntime?

With `--forwarding parallel` the upstream call is sent and answered on the event loop while
the batcher's thread scores; that overlap only happens if onnxruntime lets go of Python's
GIL while it runs. On the CPU it does (session 30: a 50 ms upstream and 33 ms of scoring
took 53 ms through the firewall in parallel mode, 85 ms in sequential). On an H100 in
session 29 the added p50 at concurrency 1 was about the scoring time even with MPS, as if
the two did not overlap; a replay's device sync or copies holding the GIL would do that.
This measures how much pure-Python work the main thread gets done while another thread
scores without pause, against the same work alone (100%: the GIL is free). Session 30
ran it on the CPU (gil-cpu.log); the next GPU session runs it on CUDA.
usage: python docs/perf/gpu-experiments/gil.py runs/untrained-resnet18
"""

import sys
import threading
import time
from pathlib import Path

import numpy as np

from firewall.artifacts import load_artifacts
from firewall.models import SessionTuning
from firewall.scoring import ScoringEngine


def python_work(seconds: float) -> int:
    """Loop iterations of plain Python in `seconds`: what the event loop could do."""
    count, stop = 0, time.perf_counter() + seconds
    while time.perf_counter() < stop:
        count += 1
    return count


case = Path(sys.argv[1])
engine = ScoringEngine(load_artifacts(case / "artifacts"), tuning=SessionTuning(threads=1, spinning=False))  # as served
x = np.load(case / "test_clean.npz")["x"][:1].astype(np.float32)
yhat = engine.score(x, rules=engine.first_stage_rules)[0]
calls = {"first stage, 1 input": lambda: engine.first_stage(x, predict=False),
         "exposed STRIP, 1 input (64 copies through E)": lambda: engine.score(x, yhat=yhat, rules=("strip",))}
for call in calls.values():
    call()
print("providers:", engine.models.providers, "| CUDA graphs:", engine.models.describe_capture())
alone = python_work(1.0)
for name, call in calls.items():
    done, runs = threading.Event(), [0]

    def score_without_pause() -> None:
        while not done.is_set():
            call()
            runs[0] += 1

    worker = threading.Thread(target=score_without_pause)
    worker.start()
    time.sleep(0.2)
    beside = python_work(1.0)
    done.set()
    worker.join()
    print(f"{name}: {runs[0]} runs; the main thread's Python work beside them {beside / alone:.0%} of alone")
