"""A local serving stack for the demo and the end-to-end tests: MLServer + firewall.

Both run as child processes in their own process groups on loopback ports, exactly
as a user would start them, and are always stopped: nothing is left running.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
MLSERVER_SERVE = REPO / "deploy" / "mlserver" / "serve"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_metrics(port: int) -> dict[str, float]:
    """Prometheus text exposition as {'name{labels}': value}, labels in exposition order."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            values[key] = float(value)
    return values


def metric(values: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for key, value in values.items():
        match = re.fullmatch(r"([^{]+)(?:\{(.*)\})?", key)
        if match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += value
    return total


class Process:
    def __init__(self, argv: list[str], log: Path, env: dict | None = None):
        self.argv, self.log_path = argv, log
        self._log = open(log, "ab")
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                      env={**os.environ, **(env or {})})

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        self._log.close()
        return self.popen.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready_or_stopped(self, wait: Callable[[], None]) -> "Process":
        """Runs `wait` (which raises if the process never becomes ready) and stops the
        process when it raises: a server that failed to start must not outlive its caller
        (the children run in their own sessions, so nothing else would stop them)."""
        try:
            wait()
        except BaseException:
            self.stop()
            raise
        return self


def _wait_serving(port: int, process: Process, timeout: float, service: str = "") -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise RuntimeError(f"{process.argv[0]} exited with {process.popen.returncode}:\n{process.log()[-3000:]}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
    raise TimeoutError(f"{process.argv[0]} not serving on {port} after {timeout}s:\n{process.log()[-3000:]}")


def _wait_model_ready(port: int, process: Process, model: str, timeout: float) -> None:
    """MLServer has no gRPC health service: poll ModelReady as a client would."""
    import tritonclient.grpc as triton

    deadline = time.monotonic() + timeout
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"MLServer exited with {process.popen.returncode}:\n{process.log()[-3000:]}")
        try:
            if client.is_model_ready(model, client_timeout=1):
                return
        except triton.InferenceServerException:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"MLServer not ready on {port} after {timeout}s:\n{process.log()[-3000:]}")


def start_mlserver(artifacts: Path, logs: Path, model: str = "classifier", timeout: float = 120.0,
                   grpc_port: int | None = None, threads: int = 0) -> tuple[Process, int, int]:
    """Returns (process, grpc port, metrics port); `threads` is the model's onnxruntime
    intra-op threads (0: onnxruntime's default)."""
    grpc_port, http_port, metrics_port = grpc_port or free_port(), free_port(), free_port()
    process = Process([str(MLSERVER_SERVE), str(artifacts), "--grpc-port", str(grpc_port), "--http-port",
                       str(http_port), "--metrics-port", str(metrics_port), "--threads", str(threads)],
                      logs / f"mlserver-{grpc_port}.log", env={"PYTHON": sys.executable})
    process.ready_or_stopped(lambda: _wait_model_ready(grpc_port, process, model, timeout))
    return process, grpc_port, metrics_port


def start_firewall(artifacts: Path, upstream_port: int, logs: Path, *extra: str,
                   timeout: float = 60.0) -> tuple[Process, int, int]:
    """Returns (process, gRPC port, metrics port)."""
    port, metrics_port = free_port(), free_port()
    process = Process([sys.executable, "-m", "firewall", "serve", "--artifacts", str(artifacts), "--upstream",
                       f"127.0.0.1:{upstream_port}", "--listen", f"127.0.0.1:{port}", "--metrics-port",
                       str(metrics_port), "--audit-log", str(logs / f"audit-{port}.jsonl"), *extra],
                      logs / f"firewall-{port}.log")
    process.ready_or_stopped(lambda: _wait_serving(port, process, timeout))
    return process, port, metrics_port


def start_passthrough(upstream_port: int, logs: Path, model: str = "classifier",
                      timeout: float = 60.0) -> tuple[Process, int]:
    """The benchmark's floor, a bare pass-through proxy; returns (process, gRPC port)."""
    port = free_port()
    process = Process([sys.executable, "-m", "offline.passthrough_proxy", f"127.0.0.1:{upstream_port}",
                       f"127.0.0.1:{port}"], logs / f"passthrough-{port}.log")
    process.ready_or_stopped(lambda: _wait_model_ready(port, process, model, timeout))
    return process, port
