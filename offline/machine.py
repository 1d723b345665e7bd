"""What a measurement ran on: the machine behind a benchmark's numbers, and the libraries and CPU
kernels behind a trained model or a build (a number or a model means little without them)."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from importlib.metadata import PackageNotFoundError, version
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


# The libraries a trained model or a built artifacts set depends on bit for bit: the same
# seed under another torch gives another model (session 21 rebuilt digits cells under torch
# 2.15 and got other weights, AUROC within +-0.04 on the ViT), so every record names them.
_BUILD_LIBRARIES = ("torch", "torchvision", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu")


def software_versions() -> dict[str, str]:
    """Python's and the build libraries' versions, read from the installed distributions
    (nothing is imported); a library that is not installed is left out."""
    versions = {"python": platform.python_version()}
    for library in _BUILD_LIBRARIES:
        try:
            versions[library] = version(library)
        except PackageNotFoundError:
            continue
    return versions


def training_platform() -> dict[str, str | int]:
    """The instruction set torch dispatched its CPU kernels to and the threads it used. The
    same seed and library versions gave other poisoned models on another VM (sessions 40, 46
    and 47) while poisoning repeats byte for byte on one: which float kernels ran is the
    suspect, so each record names them for the next comparison."""
    import torch

    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch_threads": torch.get_num_threads(),
            "cpus": os.cpu_count() or 0}


def case_description(case: Path) -> dict | None:
    """What a case that is not a poisoned model holds (`offline.untrained_case` writes case.json)."""
    path = case / "case.json"
    return json.loads(path.read_text()) if path.is_file() else None
