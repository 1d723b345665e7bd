"""The live half of `make demo`: MLServer behind the firewall, clean and triggered traffic.

usage: python -m offline.demo CASE_DIR   (a directory written by scripts/run_case.sh)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton

from firewall.artifacts import THRESHOLDS, load_artifacts
from firewall.scoring import FIREWALL
from firewall.thresholds import Thresholds
from offline.live_stack import metric, read_metrics, start_firewall, start_mlserver


def send_all(port: int, model: str, x: np.ndarray) -> np.ndarray:
    """One request per input, as separate clients would send them; True where rejected."""
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    rejected = np.zeros(len(x), bool)
    for i in range(len(x)):
        tensor = triton.InferInput("input", [1, *x.shape[1:]], "FP32")
        tensor.set_data_from_numpy(x[i : i + 1])
        try:
            client.infer(model, [tensor])
        except triton.InferenceServerException as exc:
            if exc.status() != "StatusCode.PERMISSION_DENIED":
                raise
            rejected[i] = True
    return rejected


def main(case: Path) -> int:
    artifacts = case / "artifacts"
    model = json.loads((artifacts / "manifest.json").read_text())["name"]
    clean = np.load(case / "test_clean.npz")["x"]
    triggered = np.load(case / "test_triggered.npz")["x"]
    logs = Path(tempfile.mkdtemp(prefix="demo-logs-"))
    upstream, upstream_port, _ = start_mlserver(artifacts, logs, model)
    try:
        firewall, port, metrics_port = start_firewall(artifacts, upstream_port, logs)
        try:
            print(f"\nsending {len(clean)} clean and {len(triggered)} triggered requests through the firewall ...")
            clean_rejected = send_all(port, model, clean)
            triggered_rejected = send_all(port, model, triggered)
            values = read_metrics(metrics_port)
        finally:
            firewall.stop()
    finally:
        upstream.stop()

    print(f"\n{'input':<12}{'sent':>8}{'accepted':>10}{'rejected':>10}{'rejected %':>12}")
    for kind, rejected in (("clean", clean_rejected), ("triggered", triggered_rejected)):
        print(f"{kind:<12}{len(rejected):>8}{(~rejected).sum():>10}{rejected.sum():>10}{rejected.mean():>12.2%}")
    print("\nfrom the firewall's /metrics:")
    for verdict in ("accept", "reject", "invalid", "error"):
        print(f"  firewall_requests_total{{verdict=\"{verdict}\"}} {metric(values, 'firewall_requests_total', verdict=verdict):.0f}")
    fusion = Thresholds.load(load_artifacts(case / "artifacts").path(THRESHOLDS)).fusion
    for rule in (FIREWALL, *fusion.first, *fusion.reachable_later):  # the rules the sidecar scores
        print(f"  firewall_rejections_total{{rule=\"{rule}\"}} {metric(values, 'firewall_rejections_total', rule=rule):.0f}")
    report = case / "eval.json"
    if report.is_file():
        entry = json.loads(report.read_text())["rules"]["firewall"]
        print(f"\noffline evaluate on the same artifacts: FPR {entry['threshold_fpr']:.2%} on clean, "
              f"TPR {entry.get('threshold_tpr', float('nan')):.2%} on successful attacks")
    print(f"logs: {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
