"""docs/PERFORMANCE.md from the engine and serving benchmark JSON files.

usage: python -m offline.performance_report ENGINE.json SERVING.json [--gpu-engine J] [--gpu-serving J]
       [--gpu-serving-stacked J]
       > docs/PERFORMANCE.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from firewall.models import SessionTuning
from offline.bench_engine import EAGER, FIRST_STAGE, FUSED, FUSED_INT8, FUSED_STACKED, FUSED_UNCAPTURED, SEPARATE
from offline.bench_serving import (FIRST_STAGE_TARGET_RUNG, FLOOR_RUNG, INT8_TARGET_RUNG, PINNED_UPSTREAM_THREADS,
                                   TARGET_RUNG)

TARGETS = {"p50_ratio_at_c1": 1.5, "throughput_ratio_at_c32": 0.6, "engine_speedup_b1": 3.0, "engine_speedup_b64": 1.5}
GPU_ADDED_P99_MS = 2.0  # on an H100, batch 1, a ResNet-18-sized model


def _machine(report: dict) -> str:
    m = report["machine"]
    gpu = f"{m['gpu']}, " if m.get("gpu") else ""
    extra = f", torch {m['torch']}" if "torch" in m else ""
    return (f"{gpu}{m['cpus']} CPUs ({m['processor']}); onnxruntime {m['onnxruntime']}{extra}; "
            f"providers {', '.join(m['providers'])}")


def _engine_labels(report: dict) -> dict[str, str]:
    """Row names that say what the artifacts set's first stage computed, and in how many separate sessions."""
    return {FIRST_STAGE: f"{FIRST_STAGE} ({' + '.join(report['first_stage_rules'])})",
            SEPARATE: f"onnxruntime, {report['separate_sessions']} sessions"}


def engine_section(report: dict) -> list[str]:
    labels = _engine_labels(report)
    cells = {(r["rule"], r["implementation"], r["batch"]): r for r in report["results"]}
    batches = sorted({r["batch"] for r in report["results"]})
    implementations = list(dict.fromkeys((r["rule"], r["implementation"]) for r in report["results"]))
    lines = ["| rule | implementation | " + " | ".join(f"batch {b}: ms/call (inputs/s)" for b in batches) + " |",
             "|---|---|" + "---|" * len(batches)]
    for rule, impl in implementations:
        row = [f"{cells[rule, impl, b]['ms_per_call']:.3f} ({cells[rule, impl, b]['inputs_per_s']:,.0f})"
               for b in batches]
        lines.append(f"| {labels.get(rule, rule)} | {labels.get(impl, impl)} | " + " | ".join(row) + " |")
    lines += ["", "Speed-up of the served engine over eager PyTorch, same rules, same models, same threads:", ""]
    compared = [(labels[FIRST_STAGE], FIRST_STAGE, FUSED), ("strip", "strip", "onnxruntime")]
    if (FIRST_STAGE, FUSED_INT8) in implementations:  # where the artifacts were quantized
        compared.append((f"{labels[FIRST_STAGE]}, int8 fused graph (`offline quantize`, `offline calibrate "
                         "--precision int8`)", FIRST_STAGE, FUSED_INT8))
    for label, rule, ours in compared:
        ratios = [cells[rule, EAGER, b]["ms_per_call"] / cells[rule, ours, b]["ms_per_call"] for b in batches]
        lines.append(f"- {label}: " + ", ".join(f"batch {b} **{r:.2f}x**" for b, r in zip(batches, ratios)))
    gains = [(f"fused graph over {labels[SEPARATE].removeprefix('onnxruntime, ')}", SEPARATE, FUSED),
             ("fused graph replayed as CUDA graphs over uncaptured", FUSED_UNCAPTURED, FUSED),  # measured on CUDA
             ("fused graph with B, the auxiliaries and E stacked (`offline build --stack-networks`) over one after "
              "another", FUSED, FUSED_STACKED)]
    for label, before, after in gains:
        if {(FIRST_STAGE, before), (FIRST_STAGE, after)} <= set(implementations):
            ratios = [cells[FIRST_STAGE, before, b]["ms_per_call"] / cells[FIRST_STAGE, after, b]["ms_per_call"]
                      for b in batches]
            lines.append(f"- {label}: " + ", ".join(f"batch {b} {r:.2f}x" for b, r in zip(batches, ratios)))
    return lines


def _rows_against(report: dict, threads: int) -> list[dict]:
    """The rows measured against the upstream on `threads` onnxruntime threads (runs
    before session 11 measured only onnxruntime's default, 0)."""
    return [row for row in report["results"] if row.get("upstream_threads", 0) == threads]


def serving_section(report: dict, threads: int = 0) -> list[str]:
    lines = ["| firewall configuration | c | upstream p50 ms | upstream p99 ms | upstream req/s | firewall p50 ms "
             "| firewall p99 ms | firewall req/s | **p50 ratio** | **throughput ratio** | scoring ms/batch "
             "| mean batch |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in _rows_against(report, threads):
        u, f = row["upstream"], row["firewall"]
        floor = row["config"] == FLOOR_RUNG
        scoring = "-" if floor else f"{row['scoring_ms_per_batch']:.2f}"
        batch = "-" if floor else f"{row['mean_batch_size']:.1f}"
        lines.append(f"| {row['config']} | {row['concurrency']} | {u['p50_ms']:.2f} | {u['p99_ms']:.2f} | "
                     f"{u['throughput_rps']:.0f} | {f['p50_ms']:.2f} | {f['p99_ms']:.2f} | {f['throughput_rps']:.0f} | "
                     f"{row['p50_ratio']:.2f}x | {row['throughput_ratio']:.2f}x | {scoring} | {batch} |")
    return lines


def _serving_targets(rows: list[dict], label: str) -> dict[str, float | None]:
    """The c=1 p50 ratio and the c=32 throughput ratio of the rung called `label`."""
    by = {row["concurrency"]: row for row in rows if row["config"] == label}
    return {"p50_ratio_at_c1": by[1]["p50_ratio"] if 1 in by else None,
            "throughput_ratio_at_c32": by[32]["throughput_ratio"] if 32 in by else None}


def _floor_line(rows: list[dict], upstream: str) -> list[str]:
    floor = _serving_targets(rows, FLOOR_RUNG)
    if None in floor.values():
        return []
    return [f"- {upstream}: p50 ratio {floor['p50_ratio_at_c1']:.2f}x at concurrency 1, throughput ratio "
            f"{floor['throughput_ratio_at_c32']:.2f}x at concurrency 32."]


def _verdict(key: str, value: float | None) -> str:
    if value is None:
        return "- | -"
    met = value <= TARGETS[key] if key == "p50_ratio_at_c1" else value >= TARGETS[key]
    return f"{value:.2f}x | {'yes' if met else '**no**'}"


def _measured(engine: dict, serving_rows: list[dict], rung: str, implementation: str) -> dict[str, float | None]:
    cells = {(r["rule"], r["implementation"], r["batch"]): r["ms_per_call"] for r in engine["results"]}
    speedup = lambda b: (cells[FIRST_STAGE, EAGER, b] / cells[FIRST_STAGE, implementation, b]
                         if (FIRST_STAGE, implementation, b) in cells else None)
    return {**_serving_targets(serving_rows, rung), "engine_speedup_b1": speedup(1), "engine_speedup_b64": speedup(64)}


def targets_section(engine: dict, serving: dict) -> list[str]:
    default_rows, pinned_rows = _rows_against(serving, 0), _rows_against(serving, PINNED_UPSTREAM_THREADS)
    names = {"p50_ratio_at_c1": "p50 latency through the firewall / bare upstream, concurrency 1 (at most)",
             "throughput_ratio_at_c32": "throughput through the firewall / bare upstream, concurrency 32 (at least)",
             "engine_speedup_b1": "scoring speed-up over eager PyTorch, batch 1 (at least)",
             "engine_speedup_b64": "scoring speed-up over eager PyTorch, batch 64 (at least)"}
    lines = ["| target | wanted | measured (upstream at onnxruntime's defaults) | met | measured (upstream pinned "
             f"to {PINNED_UPSTREAM_THREADS} thread) | met |", "|---|---|---|---|---|---|"]
    # The float first stage is the default; the int8 one (an opt-in for CPUs) where the run measured it.
    for suffix, rung, implementation in (("", TARGET_RUNG, FUSED),
                                         (", int8 first stage", INT8_TARGET_RUNG, FUSED_INT8)):
        measured = _measured(engine, default_rows, rung, implementation)
        pinned = _serving_targets(pinned_rows, rung)
        for key, wanted in TARGETS.items():
            if measured[key] is not None or pinned.get(key) is not None:
                lines.append(f"| {names[key]}{suffix} | {wanted:g}x | {_verdict(key, measured[key])} | "
                             f"{_verdict(key, pinned.get(key))} |")
    floors = [*_floor_line(default_rows, "upstream at onnxruntime's defaults"),
              *_floor_line(pinned_rows, f"upstream pinned to {PINNED_UPSTREAM_THREADS} thread")]
    if floors:
        lines += ["", "The floor in the same run, a bare Python gRPC pass-through proxy that does nothing else:", "",
                  *floors]
    return lines


def _added_latency(serving: dict) -> tuple[str, dict[str, float]] | None:
    """Milliseconds the firewall adds at concurrency 1 in the issue's configuration, at p50 and
    p99, with the rung they were read from: a GPU run from before the cascade became the
    default measured the issue's flags on the first stage alone."""
    for label in (TARGET_RUNG, FIRST_STAGE_TARGET_RUNG):
        rows = [row for row in serving["results"] if row["config"] == label and row["concurrency"] == 1]
        if rows:
            u, f = rows[0]["upstream"], rows[0]["firewall"]
            return label, {"p50": f["p50_ms"] - u["p50_ms"], "p99": f["p99_ms"] - u["p99_ms"]}
    return None


def _case_line(report: dict) -> str:
    case = report.get("case_description")
    if not case:
        return f"`{report['case']}`"
    return (f"`{report['case']}`: {case['arch']} at width {case['width']}, {case['parameters_per_network'] / 1e6:.1f}M "
            f"parameters per network, input {'x'.join(map(str, case['input_shape']))}, untrained (latency does not "
            "depend on the weights' values; `offline.untrained_case`)")


def _cuda_batches(engine: dict) -> str:
    """How the CUDA sessions shaped their batches in this run: runs before session 29 had no
    captured graphs (no uncaptured row either) and padded every batch to one size; session
    29's captured the ladder of its day; later runs record what they captured."""
    padded = f"every batch padded to {SessionTuning().gpu_batch} rows"
    if engine.get("cuda_graphs"):  # recorded since session 30: what this run captured
        return (f"On CUDA the sessions ran as captured CUDA graphs, as the sidecar's start line puts it: "
                f"{engine['cuda_graphs']}; each batch on the smallest size that holds it; uncaptured, {padded} "
                "(docs/PERFORMANCE_NOTES.md).")
    if not any(r["implementation"] == FUSED_UNCAPTURED for r in engine["results"]):
        return f"On CUDA the fused graph runs {padded}, as the sidecar did then (docs/PERFORMANCE_NOTES.md)."
    return (f"On CUDA the sessions run as CUDA graphs captured at {', '.join(map(str, SessionTuning().graph_rows))} "
            f"rows, each batch on the smallest that holds it, as the sidecar did then; uncaptured, {padded} "
            "(docs/PERFORMANCE_NOTES.md).")


def _target_row(serving: dict, build: str) -> list[str]:
    """The GPU target's table row for one build's serving run, or none where the run has no
    issue configuration at concurrency 1."""
    measured = _added_latency(serving)
    if measured is None:
        return []
    rung, added = measured
    met = "yes" if added["p99"] < GPU_ADDED_P99_MS else "**no**"
    return [f"| added p99 latency at batch 1 (concurrency 1, firewall p99 - bare upstream p99), "
            f"`--forwarding parallel --prediction-from-upstream`, rung \"{rung}\", {build} | "
            f"under {GPU_ADDED_P99_MS:g} ms | {added['p99']:.2f} ms (p50: {added['p50']:.2f} ms) | {met} |"]


def _gpu_serving_table(serving: dict, title: str) -> list[str]:
    providers = sorted({(r.get("upstream_provider"), r.get("firewall_provider")) for r in serving["results"]
                        if r.get("firewall_provider")})
    ran_on = "; ".join(f"upstream on {u}, firewall on {f}" for u, f in providers)
    return [title, "", f"Machine: {_machine(serving)}. Model: {_case_line(serving)}. "
            f"Where the models ran, as the servers' logs say: {ran_on}. Load: one FP32 image per "
            f"request, closed loop, {serving['rounds']} alternating rounds of {serving['seconds_per_round']:g} "
            "s per target, configuration and concurrency.", "", *serving_section(serving), ""]


def gpu_section(engine: dict | None, serving: dict | None, stacked_serving: dict | None = None) -> list[str]:
    """The GPU half; `stacked_serving` is the same benchmark on the same networks built with
    `--stack-networks`, the build a GPU deployment would choose."""
    lines = ["## GPU", "", "Generated by `make bench-gpu` on a machine with a GPU; the numbers are kept in docs/perf/ "
             "so that this page renders anywhere. The sidecar picks onnxruntime's CUDA execution provider whenever "
             "the installed onnxruntime offers it (onnxruntime-gpu) and falls back to the CPU otherwise.", ""]
    targets = [*(_target_row(serving, "default build") if serving else []),
               *(_target_row(stacked_serving, "`offline build --stack-networks`") if stacked_serving else [])]
    if targets:
        lines += ["| target | wanted | measured | met |", "|---|---|---|---|", *targets, ""]
    if serving:
        lines += _gpu_serving_table(serving, "### Serving")
    if stacked_serving:
        lines += _gpu_serving_table(stacked_serving, "### Serving, networks stacked (`offline build --stack-networks`)")
    if engine:
        device = engine.get("device", "cpu")
        waits = " (an eager call returns once the GPU has finished it)" if device != "cpu" else ""
        lines += ["### Engine", "", f"Machine: {_machine(engine)}; eager PyTorch on {device}. "
                  f"Median time of one call{waits}, {_case_line(engine)}. {_cuda_batches(engine)}", "",
                  *engine_section(engine), ""]
    return lines


def render(engine: dict, serving: dict, gpu_engine: dict | None = None, gpu_serving: dict | None = None,
           gpu_serving_stacked: dict | None = None) -> str:
    text = ["# Serving performance", "",
            "Generated by `make bench-serving` from `offline.bench_engine`, `offline.bench_serving` and "
            "`offline.performance_report`; do not edit by hand. The commentary lives in "
            "[PERFORMANCE_NOTES.md](PERFORMANCE_NOTES.md).", "",
            "## Targets (issue 5)", "", *targets_section(engine, serving), "",
            "## Serving: bare MLServer against MLServer behind the firewall", "",
            f"Machine: {_machine(serving)}. MLServer, the firewall and the tritonclient load generator share "
            "these CPUs. Model: the demo's (digits 1x16x16, ResNet width 16, BadNets), "
            f"`{serving['case']}`. Load: one FP32 image per request, closed loop, "
            f"{serving['rounds']} alternating rounds of {serving['seconds_per_round']:g} s per target, "
            "configuration and concurrency; the bare upstream is measured beside every configuration.", "",
            "The upstream's model runs on onnxruntime's default threads (one per core, idle threads "
            "spinning), as MLServer serves it out of the box:", "",
            *serving_section(serving), "",
            "Ratios are firewall over bare upstream (p50: lower is better; throughput: higher is better). "
            "`scoring ms/batch` is the firewall's own scoring time per micro-batch (and per cascade run), "
            "read from its /metrics.", ""]
    if _rows_against(serving, PINNED_UPSTREAM_THREADS):
        text += [f"### Against an upstream pinned to {PINNED_UPSTREAM_THREADS} onnxruntime thread", "",
                 f"The same MLServer started with `deploy/mlserver/serve --threads {PINNED_UPSTREAM_THREADS}`, "
                 "so that its idle threads sleep instead of taking the cores the firewall shares; both sides "
                 "measured again against it:", "",
                 *serving_section(serving, PINNED_UPSTREAM_THREADS), ""]
    text += ["## Engine: onnxruntime scoring against eager PyTorch", "",
             f"Machine: {_machine(engine)}; {engine['threads']} intra-op thread(s) on both sides. "
             f"Median time of one call, `{engine['case']}`.", "",
             *engine_section(engine), ""]
    if gpu_engine or gpu_serving or gpu_serving_stacked:
        text += gpu_section(gpu_engine, gpu_serving, gpu_serving_stacked)
    return "\n".join(text)


def main() -> int:
    parser = argparse.ArgumentParser(prog="performance_report", description=__doc__.splitlines()[0])
    parser.add_argument("engine", type=Path)
    parser.add_argument("serving", type=Path)
    parser.add_argument("--gpu-engine", type=Path, help="bench_engine --device cuda's JSON, from a GPU machine")
    parser.add_argument("--gpu-serving", type=Path, help="bench_serving's JSON from a GPU machine")
    parser.add_argument("--gpu-serving-stacked", type=Path,
                        help="the same on the same networks built with --stack-networks")
    args = parser.parse_args()
    read = lambda path: json.loads(path.read_text()) if path else None
    print(render(read(args.engine), read(args.serving), read(args.gpu_engine), read(args.gpu_serving),
                 read(args.gpu_serving_stacked)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
