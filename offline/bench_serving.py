"""`make bench-serving`: the same tritonclient load on bare MLServer and through the firewall.

Closed loop: each of C client threads sends its next request when the previous one is
answered. The two targets are measured in alternating rounds of one run, so drift on
a shared machine hits both alike. Everything stays on loopback, bounded in count and
in time. The firewall is measured in a ladder of configurations, from the first
session's (every rule on every input, onnxruntime's default threads) to every cost cut
on, so each cut's effect is read against the same bare upstream.

The upstream runs onnxruntime as it comes (a thread per core, idle threads spinning),
and then, for the issue's configuration (with the float and with the int8 first stage)
and the floor, pinned to one thread: on a
machine the firewall shares, the spinning upstream takes CPU from it
(docs/PERFORMANCE_NOTES.md).

usage: python -m offline.bench_serving CASE_DIR [--concurrency 1,8,32] [--seconds 5] [--rounds 2]
       [--configs 0,1,2,3,4|issue|issue+int8] [--pinned-upstream-configs issue+int8] [--require-provider P] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as triton

from firewall.artifacts import INT8_FUSED_FILES
from firewall.fusion import DEFAULT_CASCADE_BAND, DEFAULT_LATER_RULES
from offline.build.quantize import QuantizeConfig, run_quantize
from offline.calibrate import CalibrateConfig, run_calibrate
from offline.live_stack import Process, metric, read_metrics, start_firewall, start_mlserver, start_passthrough
from offline.machine import case_description, describe_machine


@dataclass(frozen=True)
class FirewallConfig:
    label: str
    cascade_band: float
    later_rules: tuple[str, ...] = ()  # what the band runs (`offline calibrate --later-rules`)
    flags: tuple[str, ...] = ()
    passthrough: bool = False  # the floor: a bare proxy in place of the firewall
    precision: str = "fp32"  # the first stage's graph (`offline quantize`, `offline calibrate --precision`)


WAIT = ("--max-wait-us", "500")  # the batcher's wait before session 4 made 0 the default
UNTUNED = ("--threads", "0", "--spin", *WAIT)
PARALLEL = ("--forwarding", "parallel")
FROM_UPSTREAM = (*PARALLEL, "--prediction-from-upstream", "logits")
EXPOSED_STRIP = ("strip",)
LADDER = (
    FirewallConfig("every rule on every input (session 1)", 1.0, EXPOSED_STRIP, UNTUNED),
    FirewallConfig("cascade: exposed STRIP in a 10% band", 0.1, EXPOSED_STRIP, UNTUNED),
    FirewallConfig("first stage alone: the BaDExpert rules, exposed margin, Mahalanobis (band 0)", 0.0, (),
                   UNTUNED),
    FirewallConfig("+ tuned sessions (1 thread, no spinning)", 0.0, (), WAIT),
    FirewallConfig("+ no batching wait when the scorer is idle", 0.0),
    FirewallConfig("+ parallel forwarding", 0.0, (), PARALLEL),
    FirewallConfig("+ prediction from the upstream", 0.0, (), FROM_UPSTREAM),
    FirewallConfig(f"+ the default cascade: STRIP on M and exposed STRIP in a {DEFAULT_CASCADE_BAND:.0%} band "
                   "(all defaults)",
                   DEFAULT_CASCADE_BAND, DEFAULT_LATER_RULES, FROM_UPSTREAM),
    FirewallConfig("+ int8 first stage (`offline quantize`, `offline calibrate --precision int8`)",
                   DEFAULT_CASCADE_BAND, DEFAULT_LATER_RULES, FROM_UPSTREAM, precision="int8"),
    FirewallConfig("floor: bare Python gRPC pass-through, no scoring", 0.0, passthrough=True),
)
# The targets are for `--forwarding parallel --prediction-from-upstream` with every other setting default.
TARGET_RUNG = next(config.label for config in LADDER if config.flags == FROM_UPSTREAM and config.precision == "fp32"
                   and (config.cascade_band, config.later_rules) == (DEFAULT_CASCADE_BAND, DEFAULT_LATER_RULES))
# The same with the int8 first stage, an opt-in for CPUs.
INT8_TARGET_RUNG = next(config.label for config in LADDER if config.flags == FROM_UPSTREAM and config.precision == "int8")
# The same flags without the cascade: the configuration until session 22 opened the band by default.
FIRST_STAGE_TARGET_RUNG = next(config.label for config in LADDER if config.flags == FROM_UPSTREAM
                               and config.cascade_band == 0.0)
FLOOR_RUNG = next(config.label for config in LADDER if config.passthrough)
PINNED_UPSTREAM_THREADS = 1

MAX_REQUESTS_PER_ROUND = 20000


def closed_loop(port: int, model: str, x: np.ndarray, concurrency: int, seconds: float) -> tuple[np.ndarray, int]:
    """Latencies (s) of every request answered within `seconds`, C clients in a closed loop,
    and how many of the answers were the firewall's rejection (clean inputs the firewall's
    false-positive rate turns away: answers too, counted and reported)."""
    stop_at = time.perf_counter() + seconds
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    rejected = [0] * concurrency
    errors: list[BaseException] = []

    def client(k: int) -> None:
        connection = triton.InferenceServerClient(f"127.0.0.1:{port}")
        tensor = triton.InferInput("input", [1, *x.shape[1:]], "FP32")
        i = k
        try:
            while time.perf_counter() < stop_at and len(latencies[k]) < MAX_REQUESTS_PER_ROUND // concurrency:
                tensor.set_data_from_numpy(x[i % len(x)][None])
                started = time.perf_counter()
                try:
                    connection.infer(model, [tensor])
                except triton.InferenceServerException as exc:
                    if exc.status() != "StatusCode.PERMISSION_DENIED":
                        raise
                    rejected[k] += 1
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
    return np.concatenate([np.asarray(l) for l in latencies]), sum(rejected)


def summarize(latencies: list[np.ndarray], seconds: float) -> dict:
    all_latencies = np.concatenate(latencies)
    return {"requests": int(len(all_latencies)), "p50_ms": float(np.percentile(all_latencies, 50) * 1e3),
            "p99_ms": float(np.percentile(all_latencies, 99) * 1e3),
            "throughput_rps": float(len(all_latencies) / (seconds * len(latencies)))}


def _calibrated_copy(case: Path, config: FirewallConfig, scratch: Path) -> Path:
    """The case's artifacts (models unchanged) calibrated with the rung's band, later rules
    and precision (quantized first where it is int8 and the case was not), so that a rung measures what it names
    whatever the case was calibrated with."""
    copy = scratch / (f"artifacts-band-{config.cascade_band:g}-{'+'.join(config.later_rules) or 'none'}"
                      f"-{config.precision}")
    if not copy.exists():
        shutil.copytree(case / "artifacts", copy)
        if config.precision == "int8" and not (copy / INT8_FUSED_FILES["fused"]).is_file():
            run_quantize(QuantizeConfig(copy, case / "clean.npz"))
        run_calibrate(CalibrateConfig(copy, case / "calib.npz", cascade_band=config.cascade_band,
                                      later_rules=config.later_rules, precision=config.precision))
    return copy


def _measure(upstream_port: int, port: int, metrics_port: int | None, model: str, x: np.ndarray, concurrency: int,
             seconds: float, rounds: int) -> dict:
    samples = {"upstream": [], "firewall": []}
    rejected = 0
    before = read_metrics(metrics_port) if metrics_port else {}
    for _ in range(rounds):
        samples["upstream"].append(closed_loop(upstream_port, model, x, concurrency, seconds)[0])
        latencies, rejections = closed_loop(port, model, x, concurrency, seconds)
        samples["firewall"].append(latencies)
        rejected += rejections
    after = read_metrics(metrics_port) if metrics_port else {}
    delta = lambda name: metric(after, name) - metric(before, name)
    row = {"concurrency": concurrency, **{k: summarize(v, seconds) for k, v in samples.items()},
           "scoring_ms_per_batch": 1e3 * delta("firewall_scoring_duration_seconds_sum")
           / max(1.0, delta("firewall_scoring_duration_seconds_count")),
           "mean_batch_size": delta("firewall_batch_size_sum") / max(1.0, delta("firewall_batch_size_count")),
           "firewall_rejected": rejected}
    row["p50_ratio"] = row["firewall"]["p50_ms"] / row["upstream"]["p50_ms"]
    row["throughput_ratio"] = row["firewall"]["throughput_rps"] / row["upstream"]["throughput_rps"]
    return row


def _provider_in_log(process: Process, pattern: str) -> str | None:
    """The onnxruntime provider a server says, in its log, that its models run on."""
    found = re.search(pattern, process.log())
    return found.group(1) if found else None


def _against_upstream(case: Path, model: str, x: np.ndarray, threads: int, configs: Sequence[FirewallConfig],
                      concurrencies: list[int], seconds: float, rounds: int, scratch: Path) -> list[dict]:
    """Every configuration's rows against one MLServer whose model runs on `threads`
    onnxruntime threads (0: onnxruntime's default)."""
    upstream, upstream_port, _ = start_mlserver(case / "artifacts", scratch, model, threads=threads)
    upstream_provider = _provider_in_log(upstream, r"onnxruntime providers: (\w+)")
    results = []
    try:
        closed_loop(upstream_port, model, x, 4, 1.0)  # warm up
        for config in configs:
            if config.passthrough:
                (firewall, port), metrics_port = start_passthrough(upstream_port, scratch, model), None
            else:
                firewall, port, metrics_port = start_firewall(_calibrated_copy(case, config, scratch), upstream_port,
                                                              scratch, *config.flags,
                                                              timeout=600.0)  # CUDA sessions open slowly
            try:
                closed_loop(port, model, x, 4, 1.0)  # warm up
                provider = None if config.passthrough else _provider_in_log(firewall,
                                                                             r"onnxruntime (\w+ExecutionProvider)")
                for concurrency in concurrencies:
                    row = _measure(upstream_port, port, metrics_port, model, x, concurrency, seconds, rounds)
                    results.append({"config": config.label, "cascade_band": config.cascade_band,
                                    "later_rules": list(config.later_rules),
                                    "flags": list(config.flags), "upstream_threads": threads,
                                    "upstream_provider": upstream_provider, "firewall_provider": provider, **row})
                    print(f"{config.label:<48} upstream threads {threads} c={concurrency:<3} "
                          f"p50 {row['p50_ratio']:.2f}x throughput {row['throughput_ratio']:.2f}x", flush=True)
            finally:
                firewall.stop()
    finally:
        upstream.stop()
    return results


def run(case: Path, configs: Sequence[FirewallConfig], concurrencies: list[int], seconds: float, rounds: int,
        pinned_upstream_configs: Sequence[FirewallConfig] = ()) -> dict:
    """The ladder against the upstream at onnxruntime's defaults, then
    `pinned_upstream_configs` against an upstream pinned to one thread."""
    model = json.loads((case / "artifacts" / "manifest.json").read_text())["name"]
    x = np.load(case / "test_clean.npz")["x"][:512]
    scratch = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    try:
        results = _against_upstream(case, model, x, 0, configs, concurrencies, seconds, rounds, scratch)
        if pinned_upstream_configs:
            results += _against_upstream(case, model, x, PINNED_UPSTREAM_THREADS, pinned_upstream_configs,
                                         concurrencies, seconds, rounds, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {"case": str(case), "case_description": case_description(case), "seconds_per_round": seconds,
            "rounds": rounds,
            "machine": describe_machine(ort.get_available_providers()),
            "results": results}


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench_serving", description=__doc__.splitlines()[0])
    parser.add_argument("case", type=Path)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--configs", default=",".join(map(str, range(len(LADDER)))),
                        help="which rungs of the ladder to measure, by index, or 'issue' for the issue's "
                             "configuration and the floor ('issue+int8': and the int8 first stage, a CPU option)")
    parser.add_argument("--require-provider", metavar="PROVIDER",
                        help="fail unless both servers' models ran on this onnxruntime provider "
                             "(e.g. CUDAExecutionProvider: no CPU fallback passes for a GPU number)")
    parser.add_argument("--pinned-upstream-configs", default="issue+int8",
                        help="rungs measured again against an upstream pinned to one onnxruntime thread, by "
                             "index, 'issue' or 'issue+int8' (the default; '' for none)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rung_sets = {"issue": (TARGET_RUNG, FLOOR_RUNG), "issue+int8": (TARGET_RUNG, INT8_TARGET_RUNG, FLOOR_RUNG)}
    named = {name: ",".join(str(i) for i, c in enumerate(LADDER) if c.label in labels)
             for name, labels in rung_sets.items()}
    rungs = lambda indices: [LADDER[int(i)] for i in named.get(indices, indices).split(",") if i]
    report = run(args.case, rungs(args.configs), [int(c) for c in args.concurrency.split(",")], args.seconds,
                 args.rounds, rungs(args.pinned_upstream_configs))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.require_provider:
        ran = {row[key] for row in report["results"] for key in ("upstream_provider", "firewall_provider")
               if row[key] is not None}
        if ran != {args.require_provider}:
            parser.error(f"--require-provider {args.require_provider}: the servers ran on {sorted(ran)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
