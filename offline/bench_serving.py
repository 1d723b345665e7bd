"""`make bench-serving`: the same tritonclient load on bare MLServer and through the firewall.

Closed loop: each of C client threads sends its next request when the previous one is
answered. The two targets are measured in alternating rounds of one run, so drift on
a shared machine hits both alike. Everything stays on loopback, bounded in count and
in time. Results go to stdout as a Markdown table (and to --json).

usage: python -m offline.bench_serving CASE_DIR [--concurrency 1,8,32] [--seconds 5] [--rounds 2]
       [--markdown OUT.md] [--json OUT.json] [-- FIREWALL_SERVE_FLAGS...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as triton

from offline.live_stack import metric, read_metrics, start_firewall, start_mlserver

MAX_REQUESTS_PER_ROUND = 20000


def closed_loop(port: int, model: str, x: np.ndarray, concurrency: int, seconds: float) -> np.ndarray:
    """Latencies (s) of every request answered within `seconds`, C clients in a closed loop."""
    stop_at = time.perf_counter() + seconds
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors: list[BaseException] = []

    def client(k: int) -> None:
        connection = triton.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = triton.InferInput("input", [1, *x.shape[1:]], "FP32")
        i = k
        try:
            while time.perf_counter() < stop_at and len(latencies[k]) < MAX_REQUESTS_PER_ROUND // concurrency:
                tensor.set_data_from_numpy(x[i % len(x)][None])
                started = time.perf_counter()
                connection.infer(model, [tensor])
                latencies[k].append(time.perf_counter() - started)
                i += concurrency
        except BaseException as exc:  # surfaced after the threads join
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return np.concatenate([np.asarray(l) for l in latencies])


def summarize(latencies: list[np.ndarray], seconds: float) -> dict:
    all_latencies = np.concatenate(latencies)
    return {"requests": int(len(all_latencies)), "p50_ms": float(np.percentile(all_latencies, 50) * 1e3),
            "p99_ms": float(np.percentile(all_latencies, 99) * 1e3),
            "throughput_rps": float(len(all_latencies) / (seconds * len(latencies)))}


def run(case: Path, concurrencies: list[int], seconds: float, rounds: int, firewall_args: list[str]) -> dict:
    artifacts = case / "artifacts"
    model = json.loads((artifacts / "manifest.json").read_text())["name"]
    x = np.load(case / "test_clean.npz")["x"][:512]
    logs = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    upstream, upstream_port, _ = start_mlserver(artifacts, logs, model)
    try:
        firewall, port, metrics_port = start_firewall(artifacts, upstream_port, logs, *firewall_args)
        try:
            closed_loop(upstream_port, model, x, 4, 1.0)  # warm both paths up
            closed_loop(port, model, x, 4, 1.0)
            results = []
            for concurrency in concurrencies:
                samples = {"upstream": [], "firewall": []}
                before = read_metrics(metrics_port)
                for _ in range(rounds):
                    samples["upstream"].append(closed_loop(upstream_port, model, x, concurrency, seconds))
                    samples["firewall"].append(closed_loop(port, model, x, concurrency, seconds))
                after = read_metrics(metrics_port)
                delta = lambda name: metric(after, name) - metric(before, name)
                row = {"concurrency": concurrency, **{k: summarize(v, seconds) for k, v in samples.items()},
                       "scoring_ms_per_batch": 1e3 * delta("firewall_scoring_duration_seconds_sum")
                       / max(1.0, delta("firewall_scoring_duration_seconds_count")),
                       "mean_batch_size": delta("firewall_batch_size_sum") / max(1.0, delta("firewall_batch_size_count"))}
                row["p50_ratio"] = row["firewall"]["p50_ms"] / row["upstream"]["p50_ms"]
                row["throughput_ratio"] = row["firewall"]["throughput_rps"] / row["upstream"]["throughput_rps"]
                results.append(row)
        finally:
            firewall.stop()
    finally:
        upstream.stop()
    return {"case": str(case), "firewall_args": firewall_args, "seconds_per_round": seconds, "rounds": rounds,
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                        "onnxruntime": ort.__version__, "providers": ort.get_available_providers()},
            "results": results}


def to_markdown(report: dict) -> str:
    lines = ["| concurrency | upstream p50 ms | upstream p99 ms | upstream req/s | firewall p50 ms | firewall p99 ms "
             "| firewall req/s | p50 ratio | throughput ratio | scoring ms/batch | mean batch |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["results"]:
        u, f = row["upstream"], row["firewall"]
        lines.append(f"| {row['concurrency']} | {u['p50_ms']:.2f} | {u['p99_ms']:.2f} | {u['throughput_rps']:.0f} | "
                     f"{f['p50_ms']:.2f} | {f['p99_ms']:.2f} | {f['throughput_rps']:.0f} | {row['p50_ratio']:.2f}x | "
                     f"{row['throughput_ratio']:.2f}x | {row['scoring_ms_per_batch']:.2f} | {row['mean_batch_size']:.1f} |")
    return "\n".join(lines)


def to_document(report: dict) -> str:
    machine = report["machine"]
    return "\n".join([
        "# Serving performance", "",
        "Generated by `make bench-serving` (`python -m offline.bench_serving runs/digits-badnets-resnet "
        "--markdown docs/PERFORMANCE.md`). Do not edit by hand.", "",
        f"Machine: {machine['cpus']} CPUs ({machine['processor']}), no GPU; onnxruntime {machine['onnxruntime']} "
        f"with {', '.join(machine['providers'])}. MLServer, the firewall and the load generator share these CPUs.", "",
        f"Load: tritonclient gRPC, one FP32 digits image (1x16x16) per request, closed loop, "
        f"{report['rounds']} alternating rounds of {report['seconds_per_round']:g} s per target and concurrency. "
        f"Firewall flags: `{' '.join(report['firewall_args']) or '(defaults)'}`; rules badexpert + exposed STRIP "
        "(64 superimposed copies through E per input).", "",
        to_markdown(report), "",
        "Ratios are firewall over bare upstream: p50 latency (lower is better) and throughput (higher is better).",
        "`scoring ms/batch` is the firewall's own scoring time per micro-batch, read from its /metrics.", ""])


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench_serving", description=__doc__.splitlines()[0])
    parser.add_argument("case", type=Path)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path, help="write the whole report document here")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    extra = argv[split + 1 :]  # extra `firewall serve` flags
    report = run(args.case, [int(c) for c in args.concurrency.split(",")], args.seconds, args.rounds, extra)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.markdown:
        args.markdown.write_text(to_document(report))
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
