"""`firewall serve`: the sidecar's command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from firewall.config import MODES, ON_ERROR, ServeConfig
from firewall.errors import run_reporting_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="firewall", description="backdoor-firewall sidecar")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the Open Inference Protocol v2 in front of a model server")
    s.add_argument("--artifacts", required=True, type=Path)
    s.add_argument("--upstream", required=True, help="HOST:PORT of the model server's gRPC endpoint")
    s.add_argument("--listen", default="0.0.0.0:8500")
    s.add_argument("--metrics-port", type=int, default=9100)
    s.add_argument("--mode", choices=MODES, default="enforce", help="monitor scores and records but forwards all")
    s.add_argument("--on-error", choices=ON_ERROR, default="reject", help="what to do when scoring fails")
    s.add_argument("--audit-log", type=Path, default=Path("firewall-audit.jsonl"))
    s.add_argument("--max-batch-size", type=int, default=32)
    s.add_argument("--max-wait-us", type=int, default=500)
    s.add_argument("--upstream-timeout", type=float, default=30.0, help="seconds")
    s.add_argument("--drain-seconds", type=float, default=10.0)
    s.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0: its default)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = ServeConfig(artifacts=args.artifacts, upstream=args.upstream, listen=args.listen,
                         metrics_port=args.metrics_port, mode=args.mode, on_error=args.on_error,
                         audit_log=args.audit_log, max_batch_size=args.max_batch_size, max_wait_us=args.max_wait_us,
                         upstream_timeout_s=args.upstream_timeout, drain_seconds=args.drain_seconds,
                         threads=args.threads)
    from firewall.server import serve

    return run_reporting_errors(lambda: asyncio.run(serve(config)), OSError)


if __name__ == "__main__":
    sys.exit(main())
