import subprocess, sys, threading, time
import numpy as np, onnxruntime as o
o.set_default_logger_severity(3)
P = [("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}), "CPUExecutionProvider"]
ART = "runs/untrained-resnet18/artifacts/"
def session(name): return o.InferenceSession(ART + name, providers=P)
def x(b): return np.random.rand(b, 3, 32, 32).astype(np.float32)
def loop(s, b, n):
    xb = x(b)
    for _ in range(10): s.run(None, {"input": xb})
    ts = []
    for _ in range(n):
        t = time.perf_counter(); s.run(None, {"input": xb}); ts.append(time.perf_counter() - t)
    return "p50 %.2f p99 %.2f ms" % (np.median(ts) * 1e3, np.percentile(ts, 99) * 1e3)
if sys.argv[1:] == ["bg"]:
    s, xb = session("original.onnx"), x(1)
    while True: s.run(None, {"input": xb})
fused = session("fused_without_original.onnx")
for b in (1, 8): print("alone", b, loop(fused, b, 300), flush=True)
bg = subprocess.Popen([sys.executable, __file__, "bg"]); time.sleep(8)
for b in (1, 8): print("beside another process running ResNet-18 nonstop", b, loop(fused, b, 60), flush=True)
bg.kill(); bg.wait(); time.sleep(1)
stop = False
def spin():
    s, xb = session("original.onnx"), x(1)
    while not stop: s.run(None, {"input": xb})
th = threading.Thread(target=spin); th.start(); time.sleep(5)
for b in (1, 8): print("beside a thread of the same process running ResNet-18 nonstop", b, loop(fused, b, 100), flush=True)
stop = True; th.join()
