"""What a benchmark ran on, for its report: a number means little without its machine."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

import onnxruntime as ort


def gpu_name() -> str | None:
    """The first GPU as nvidia-smi names it (with its driver), or None where there is none."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = listed.stdout.strip().splitlines()[:1]
    if listed.returncode != 0 or not first:
        return None
    name, _, driver = first[0].partition(",")
    return f"{name.strip()} (driver {driver.strip()})" if driver else name.strip()


def describe_machine(providers: list[str]) -> dict:
    """CPUs, processor, onnxruntime and the providers the measured engine ran on, and the GPU if any."""
    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "onnxruntime": ort.__version__, "providers": providers, "gpu": gpu_name()}


def case_description(case: Path) -> dict | None:
    """What a case that is not a poisoned model holds (`offline.untrained_case` writes case.json)."""
    path = case / "case.json"
    return json.loads(path.read_text()) if path.is_file() else None
