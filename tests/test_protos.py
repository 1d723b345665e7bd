"""The committed stubs are what protoc makes of protos/ today (`make protos` refreshes them)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GENERATED = ("grpc_predict_v2_pb2.py", "grpc_predict_v2_pb2_grpc.py", "grpc_predict_v2_pb2.pyi")


def test_generated_stubs_are_up_to_date(tmp_path):
    subprocess.run([str(REPO / "scripts" / "gen_protos.sh"), str(tmp_path)], cwd=REPO, check=True,
                   env={**os.environ, "PYTHON": sys.executable})
    for name in GENERATED:
        fresh = (tmp_path / "firewall" / "protocol" / name).read_text()
        committed = (REPO / "firewall" / "protocol" / name).read_text()
        assert fresh == committed, f"firewall/protocol/{name} is stale: run `make protos`"


def test_the_service_has_the_six_rpcs_of_the_protocol():
    text = (REPO / "protos" / "grpc_predict_v2.proto").read_text()
    for rpc in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"):
        assert f"rpc {rpc}(" in text
