"""The sidecar's configuration: built once from the command line, passed down typed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from firewall.errors import UserError

MODES = ("enforce", "monitor")
ON_ERROR = ("reject", "allow")
FORWARDING = ("sequential", "parallel")


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
    max_wait_us: int = 0
    upstream_timeout_s: float = 30.0
    drain_seconds: float = 10.0
    threads: int = 1
    spinning: bool = False
    forwarding: str = "sequential"
    prediction_from_upstream: str | None = None

    def __post_init__(self) -> None:
        if self.prediction_from_upstream and self.forwarding != "parallel":
            raise UserError("--prediction-from-upstream needs --forwarding parallel: the prediction arrives "
                            "with the upstream's answer, and sequential forwarding promises the upstream never "
                            "sees an input before its verdict")
