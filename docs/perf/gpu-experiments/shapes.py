import time
import numpy as np, onnxruntime as o
o.set_default_logger_severity(3)
ART = "runs/untrained-resnet18/artifacts/fused_without_original.onnx"
def session(search):
    opts = o.SessionOptions(); opts.intra_op_num_threads = 1; opts.inter_op_num_threads = 1
    return o.InferenceSession(ART, opts, providers=[("CUDAExecutionProvider", {"cudnn_conv_algo_search": search}), "CPUExecutionProvider"])
sizes = [1, 4, 2, 8, 3, 16, 5, 32]
xs = {b: np.random.rand(b, 3, 32, 32).astype(np.float32) for b in sizes}
def run(pick, label):
    for b in sizes: pick(b).run(None, {"input": xs[b]})
    for b in sizes: pick(b).run(None, {"input": xs[b]})
    ts = []
    for i in range(80):
        b = sizes[i % len(sizes)]
        t = time.perf_counter(); pick(b).run(None, {"input": xs[b]}); ts.append(time.perf_counter() - t)
    print(label, "p50 %.2f p99 %.2f ms" % (np.median(ts) * 1e3, np.percentile(ts, 99) * 1e3), flush=True)
for search in ("HEURISTIC", "EXHAUSTIVE"):
    s = session(search)
    run(lambda b: s, f"{search:<10} one session, batch size changing every call:")
    per = {b: session(search) for b in sizes}
    run(lambda b: per[b], f"{search:<10} one session per batch size, same sequence:")
    fixed = session(search); x32 = xs[32]
    ts = []
    for i in range(60):
        t = time.perf_counter(); fixed.run(None, {"input": x32}); ts.append(time.perf_counter() - t)
    print(f"{search:<10} one session, always batch 32:", "p50 %.2f p99 %.2f ms" % (np.median(ts[10:]) * 1e3, np.percentile(ts[10:], 99) * 1e3), flush=True)
