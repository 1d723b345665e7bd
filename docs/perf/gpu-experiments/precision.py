"""Where the rest of the captured batch-1 time goes, and what TF32 does to the scores.

onnxruntime's CUDA provider lets cuDNN and cuBLAS use TF32 (10-bit mantissa) for float32
convolutions and matrix products unless `use_tf32` is 0. This times the fused graph
without M, captured, at 1 and 32 rows with TF32 on (the default) and off, and one
ResNet-18 (M alone) likewise, and compares each setting's scores with the CPU's.
Session 29; output in precision.log.
usage: python docs/perf/gpu-experiments/precision.py runs/untrained-resnet18
"""

import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from firewall.cuda_graph import BoundReplay
from firewall.models import CUDA_OPTIONS, SessionTuning

case = Path(sys.argv[1])
pool = np.load(case / "test_clean.npz")["x"].astype(np.float32)
shape = pool.shape[1:]


def session(name: str, provider: list) -> ort.InferenceSession:
    return ort.InferenceSession(str(case / "artifacts" / name), SessionTuning().session_options(), providers=provider)


for name in ("fused_without_original.onnx", "original.onnx"):
    cpu = session(name, ["CPUExecutionProvider"])
    for tf32 in ("1", "0"):
        gpu = session(name, [("CUDAExecutionProvider", {**CUDA_OPTIONS, "enable_cuda_graph": "1", "use_tf32": tf32}),
                             "CPUExecutionProvider"])
        for graph_id, rows in enumerate((1, 32)):
            replay = BoundReplay(gpu, shape, rows, graph_id=graph_id)
            x = pool[:rows]
            got, ref = replay.run(x), cpu.run(None, {cpu.get_inputs()[0].name: x})
            gap = max(float(np.max(np.abs(g - r))) / (float(np.max(np.abs(r))) + 1e-12) for g, r in zip(got, ref))
            times = []
            for _ in range(300):
                start = time.perf_counter()
                replay.run(x)
                times.append(time.perf_counter() - start)
            times = np.array(times[20:]) * 1e3
            print(f"{name:<28} tf32 {tf32} rows {rows:>2}: p50 {np.median(times):6.3f} ms p99 "
                  f"{np.percentile(times, 99):6.3f} ms; largest gap to CPU / output range {gap:.2e}", flush=True)
