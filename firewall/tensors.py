"""Decode and validate the input tensor of a ModelInfer request against the manifest.

Everything that is not exactly what the protected model takes is refused here,
before scoring and before the upstream sees it: a firewall that forwarded what it
could not score would be a bypass.
"""

from __future__ import annotations

import math

import numpy as np

from firewall.artifacts import Manifest
from firewall.protocol import grpc_predict_v2_pb2 as pb

SHARED_MEMORY_KEYS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


class InvalidInput(ValueError):
    """The request is malformed for this model; answered with INVALID_ARGUMENT."""


def decode_input(request: pb.ModelInferRequest, manifest: Manifest) -> np.ndarray:
    """The request's input as float32 [N, *input_shape], or InvalidInput saying why."""
    if len(request.inputs) != 1:
        raise InvalidInput(f"model {manifest.name} takes exactly one input '{manifest.input_name}', "
                           f"got {len(request.inputs)}")
    tensor = request.inputs[0]
    if tensor.name != manifest.input_name:
        raise InvalidInput(f"input is named '{tensor.name}', expected '{manifest.input_name}'")
    hidden = [k for k in SHARED_MEMORY_KEYS if k in tensor.parameters or k in request.parameters]
    if hidden:
        raise InvalidInput("shared-memory inputs cannot be inspected by the firewall; send the tensor in the request")
    if tensor.datatype != manifest.input_datatype:
        raise InvalidInput(f"input datatype is {tensor.datatype}, expected {manifest.input_datatype}")
    shape = tuple(tensor.shape)
    if len(shape) != 1 + len(manifest.input_shape) or shape[1:] != manifest.input_shape or shape[0] < 1:
        raise InvalidInput(f"input shape is {list(shape)}, expected [N, {', '.join(map(str, manifest.input_shape))}]")
    count = math.prod(shape)
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InvalidInput(f"{len(request.raw_input_contents)} raw input buffers for one input")
        if tensor.HasField("contents"):
            raise InvalidInput("input has both raw and typed contents")
        raw = request.raw_input_contents[0]
        if len(raw) != count * 4:
            raise InvalidInput(f"raw input has {len(raw)} bytes, shape {list(shape)} of FP32 needs {count * 4}")
        x = np.frombuffer(raw, dtype="<f4").reshape(shape)
    else:
        values = tensor.contents.fp32_contents
        if len(values) != count:
            raise InvalidInput(f"input has {len(values)} fp32 values, shape {list(shape)} needs {count}")
        x = np.asarray(values, dtype=np.float32).reshape(shape)
    if not np.isfinite(x).all():
        raise InvalidInput("input contains NaN or Inf")
    return x
