"""The sidecar's configuration: built once from the command line, passed down typed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODES = ("enforce", "monitor")
ON_ERROR = ("reject", "allow")


@dataclass(frozen=True)
class ServeConfig:
    artifacts: Path
    upstream: str
    listen: str = "0.0.0.0:8500"
    metrics_port: int = 9100
    mode: str = "enforce"
    on_error: str = "reject"
    audit_log: Path = Path("firewall-audit.jsonl")
    max_batch_size: int = 32
    max_wait_us: int = 500
    upstream_timeout_s: float = 30.0
    drain_seconds: float = 10.0
    threads: int = 0
