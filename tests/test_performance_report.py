"""docs/PERFORMANCE.md's targets are read off the rows as the issue states them: the GPU's
is the latency the firewall adds at batch 1, its p99 minus the bare upstream's p99 at
concurrency 1 in the issue's configuration, against 2 ms; the CPU's are the issue's
configuration's ratios, with the float first stage and, where measured, the int8 one."""

from __future__ import annotations

from offline.bench_engine import EAGER, FIRST_STAGE, FUSED, FUSED_INT8, FUSED_STACKED, SEPARATE
from offline.bench_serving import FIRST_STAGE_TARGET_RUNG, FLOOR_RUNG, INT8_TARGET_RUNG, TARGET_RUNG
from offline.performance_report import engine_section, gpu_section, targets_section


def _row(config: str, concurrency: int, upstream_p99: float, firewall_p99: float) -> dict:
    side = lambda p99: {"requests": 100, "p50_ms": p99 / 2, "p99_ms": p99, "throughput_rps": 1000 / p99}
    return {"config": config, "concurrency": concurrency, "upstream": side(upstream_p99),
            "firewall": side(firewall_p99), "p50_ratio": firewall_p99 / upstream_p99,
            "throughput_ratio": upstream_p99 / firewall_p99, "scoring_ms_per_batch": 1.0, "mean_batch_size": 1.0,
            "upstream_provider": "CUDAExecutionProvider",
            "firewall_provider": None if config == FLOOR_RUNG else "CUDAExecutionProvider"}


def _serving(*rows: dict) -> dict:
    machine = {"cpus": 16, "processor": "x86_64", "onnxruntime": "1.31.1", "providers": ["CUDAExecutionProvider"],
               "gpu": "NVIDIA H100 80GB HBM3"}
    return {"case": "runs/x", "rounds": 2, "seconds_per_round": 5, "machine": machine, "results": list(rows)}


def test_the_added_p99_at_concurrency_1_decides_the_gpu_target():
    met = "\n".join(gpu_section(None, _serving(_row(TARGET_RUNG, 1, 3.0, 4.5), _row(TARGET_RUNG, 8, 3.0, 30.0))))
    assert "| 1.50 ms (p50: 0.75 ms) | yes |" in met
    missed = "\n".join(gpu_section(None, _serving(_row(TARGET_RUNG, 1, 3.0, 5.5), _row(FLOOR_RUNG, 1, 3.0, 3.1))))
    assert "| 2.50 ms (p50: 1.25 ms) | **no** |" in missed
    assert "NVIDIA H100 80GB HBM3" in missed and "firewall on CUDAExecutionProvider" in missed


def test_without_the_issues_configuration_at_concurrency_1_no_gpu_target_is_claimed():
    text = "\n".join(gpu_section(None, _serving(_row(TARGET_RUNG, 8, 3.0, 4.0))))
    assert "added p99" not in text


def test_a_run_from_before_the_default_cascade_is_read_off_the_first_stage_rung_and_says_so():
    earlier = "\n".join(gpu_section(None, _serving(_row(FIRST_STAGE_TARGET_RUNG, 1, 3.0, 4.0))))
    assert "| 1.00 ms (p50: 0.50 ms) | yes |" in earlier and f'rung "{FIRST_STAGE_TARGET_RUNG}"' in earlier
    both = "\n".join(gpu_section(None, _serving(_row(FIRST_STAGE_TARGET_RUNG, 1, 3.0, 4.0),
                                                _row(TARGET_RUNG, 1, 3.0, 6.0))))
    assert "| 3.00 ms (p50: 1.50 ms) | **no** |" in both and f'rung "{TARGET_RUNG}"' in both


def test_the_stacked_build_has_its_own_target_row_and_serving_table_beside_the_default_one():
    default, stacked = _serving(_row(TARGET_RUNG, 1, 3.0, 6.0)), _serving(_row(TARGET_RUNG, 1, 3.0, 4.0))
    text = "\n".join(gpu_section(None, default, stacked))
    rows = [line for line in text.splitlines() if line.startswith("| added p99")]
    assert len(rows) == 2
    assert "default build" in rows[0] and "| 3.00 ms (p50: 1.50 ms) | **no** |" in rows[0]
    assert "--stack-networks" in rows[1] and "| 1.00 ms (p50: 0.50 ms) | yes |" in rows[1]
    assert "### Serving, networks stacked" in text


def _engine(ms: dict[str, dict[int, float]]) -> dict:
    return {"results": [{"rule": FIRST_STAGE, "implementation": impl, "batch": b, "ms_per_call": t}
                        for impl, by_batch in ms.items() for b, t in by_batch.items()]}


def test_the_cpu_targets_show_the_int8_first_stage_beside_the_float_one_when_it_was_measured():
    float_only = _engine({EAGER: {1: 2.0, 64: 14.0}, FUSED: {1: 0.25, 64: 10.0}})
    rows = _serving(_row(TARGET_RUNG, 1, 1.0, 3.0), _row(TARGET_RUNG, 32, 1.0, 3.0))
    text = "\n".join(targets_section(float_only, rows))
    assert "batch 64 (at least) | 1.5x | 1.40x | **no** |" in text and "int8" not in text
    with_int8 = _engine({EAGER: {1: 2.0, 64: 14.0}, FUSED: {1: 0.25, 64: 10.0}, FUSED_INT8: {1: 0.25, 64: 7.0}})
    rows["results"] += [_row(INT8_TARGET_RUNG, 1, 1.0, 2.5), _row(INT8_TARGET_RUNG, 32, 1.0, 2.5)]
    text = "\n".join(targets_section(with_int8, rows))
    assert "batch 64 (at least), int8 first stage | 1.5x | 2.00x | yes |" in text
    assert "concurrency 1 (at most), int8 first stage | 1.5x | 2.50x | **no** |" in text
    assert "batch 64 (at least) | 1.5x | 1.40x | **no** |" in text


def _engine_report(ms: dict[str, dict[int, float]]) -> dict:
    strip = [{"rule": "strip", "implementation": impl, "batch": b, "ms_per_call": 1.0}
             for impl in (EAGER, "onnxruntime") for b in (1, 64)]
    rows = [{**row, "inputs_per_s": 1.0} for row in _engine(ms)["results"] + strip]
    return {"results": rows, "first_stage_rules": ["badexpert"], "separate_sessions": 5}


def test_the_stacked_networks_gain_is_reported_only_where_a_stacked_build_was_timed():
    times = {EAGER: {1: 2.0, 64: 14.0}, SEPARATE: {1: 0.6, 64: 20.0}, FUSED: {1: 0.25, 64: 10.0}}
    assert "stacked" not in "\n".join(engine_section(_engine_report(times)))
    text = "\n".join(engine_section(_engine_report({**times, FUSED_STACKED: {1: 0.125, 64: 12.5}})))
    assert "stacked (`offline build --stack-networks`) over one after another: batch 1 2.00x, batch 64 0.80x" in text
