#!/usr/bin/env bash
# Regenerate the Python stubs of protos/*.proto into firewall/protocol/.
# The proto path maps protos/ to firewall/protocol so that the generated gRPC module
# imports its messages as `firewall.protocol.grpc_predict_v2_pb2`.
set -euo pipefail
python=${PYTHON:-.venv/bin/python}
out=${1:-.}
$python -m grpc_tools.protoc --proto_path=firewall/protocol=protos \
  --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" \
  firewall/protocol/grpc_predict_v2.proto
