"""docs/PERFORMANCE.md's GPU target is read off the serving rows as the issue states it:
the latency the firewall adds at batch 1, its p99 minus the bare upstream's p99 at
concurrency 1 in the issue's configuration, against 2 ms."""

from __future__ import annotations

from offline.bench_serving import FIRST_STAGE_TARGET_RUNG, FLOOR_RUNG, TARGET_RUNG
from offline.performance_report import gpu_section


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
    assert "| 1.50 ms | yes |" in met
    missed = "\n".join(gpu_section(None, _serving(_row(TARGET_RUNG, 1, 3.0, 5.5), _row(FLOOR_RUNG, 1, 3.0, 3.1))))
    assert "| 2.50 ms | **no** |" in missed
    assert "NVIDIA H100 80GB HBM3" in missed and "firewall on CUDAExecutionProvider" in missed


def test_without_the_issues_configuration_at_concurrency_1_no_gpu_target_is_claimed():
    text = "\n".join(gpu_section(None, _serving(_row(TARGET_RUNG, 8, 3.0, 4.0))))
    assert "added p99" not in text


def test_a_run_from_before_the_default_cascade_is_read_off_the_first_stage_rung_and_says_so():
    earlier = "\n".join(gpu_section(None, _serving(_row(FIRST_STAGE_TARGET_RUNG, 1, 3.0, 4.0))))
    assert "| 1.00 ms | yes |" in earlier and f'rung "{FIRST_STAGE_TARGET_RUNG}"' in earlier
    both = "\n".join(gpu_section(None, _serving(_row(FIRST_STAGE_TARGET_RUNG, 1, 3.0, 4.0),
                                                _row(TARGET_RUNG, 1, 3.0, 6.0))))
    assert "| 3.00 ms | **no** |" in both and f'rung "{TARGET_RUNG}"' in both
