"""`firewall serve`: the sidecar's command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from firewall.config import FORWARDING, MODES, ON_ERROR, ServeConfig
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
    s.add_argument("--max-wait-us", type=int, default=0,
                   help="how long a batch waits for more requests when the scorer is idle")
    s.add_argument("--upstream-timeout", type=float, default=30.0, help="seconds")
    s.add_argument("--drain-seconds", type=float, default=10.0)
    s.add_argument("--forwarding", choices=FORWARDING, default="sequential",
                   help="parallel sends each request upstream while it is scored and holds the answer back "
                        "until the verdict (the upstream then sees rejected inputs too)")
    s.add_argument("--prediction-from-upstream", metavar="OUTPUT",
                   help="read M's prediction from this output of the upstream's response instead of running "
                        "the original model again (needs --forwarding parallel)")
    s.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads per session (0: all cores)")
    s.add_argument("--spin", action="store_true",
                   help="let idle onnxruntime threads spin (lower latency, but takes CPU from a co-located upstream)")
    return parser


def config_from(args: argparse.Namespace) -> ServeConfig:
    return ServeConfig(artifacts=args.artifacts, upstream=args.upstream, listen=args.listen,
                       metrics_port=args.metrics_port, mode=args.mode, on_error=args.on_error,
                       audit_log=args.audit_log, max_batch_size=args.max_batch_size, max_wait_us=args.max_wait_us,
                       upstream_timeout_s=args.upstream_timeout, drain_seconds=args.drain_seconds,
                       threads=args.threads, spinning=args.spin, forwarding=args.forwarding,
                       prediction_from_upstream=args.prediction_from_upstream)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> None:
        from firewall.server import serve

        asyncio.run(serve(config_from(args)))

    return run_reporting_errors(run, OSError)


if __name__ == "__main__":
    sys.exit(main())
