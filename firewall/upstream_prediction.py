"""M's prediction read from the upstream's own ModelInfer response.

With `--prediction-from-upstream OUTPUT` the firewall does not run the original model:
the production server has just computed it, and its answer names the class the rules
must test. OUTPUT may hold scores `[N, K]` (logits or probabilities: the argmax is the
prediction) or class indices `[N]` / `[N, 1]`.
"""

from __future__ import annotations

import math

import numpy as np

from google.protobuf.message import Message

_TYPES = {  # datatype: (little-endian numpy dtype, typed-contents field)
    "FP32": ("<f4", "fp32_contents"), "FP64": ("<f8", "fp64_contents"), "FP16": ("<f2", None),
    "INT64": ("<i8", "int64_contents"), "INT32": ("<i4", "int_contents"),
    "UINT8": ("u1", "uint_contents"), "INT8": ("i1", "int_contents"),
}


class UnreadablePrediction(ValueError):
    """The upstream's response does not carry a prediction the firewall can read."""


def prediction_from_response(response: Message, output: str, batch: int, num_classes: int) -> np.ndarray:
    names = [o.name for o in response.outputs]
    if output not in names:
        raise UnreadablePrediction(f"the upstream's response has no output '{output}' (it has {names})")
    index = names.index(output)
    tensor = response.outputs[index]
    if tensor.datatype not in _TYPES:
        raise UnreadablePrediction(f"output '{output}' has datatype {tensor.datatype}; expected one of {sorted(_TYPES)}")
    dtype, field = _TYPES[tensor.datatype]
    shape = tuple(tensor.shape)
    if response.raw_output_contents:
        values = np.frombuffer(response.raw_output_contents[index], dtype=dtype)
    elif field is not None:
        values = np.asarray(getattr(tensor.contents, field), dtype=dtype)
    else:
        raise UnreadablePrediction(f"output '{output}' is {tensor.datatype} without raw contents")
    if values.size != math.prod(shape):
        raise UnreadablePrediction(f"output '{output}' has {values.size} values for shape {list(shape)}")
    values = values.reshape(shape)
    if values.dtype.kind == "f" and shape == (batch, num_classes):
        return values.argmax(axis=1).astype(np.int64)
    if values.dtype.kind in "iu" and shape in ((batch,), (batch, 1)):
        labels = values.reshape(batch).astype(np.int64)
        if labels.min() < 0 or labels.max() >= num_classes:
            raise UnreadablePrediction(f"output '{output}' holds class indices outside [0, {num_classes})")
        return labels
    raise UnreadablePrediction(f"output '{output}' has shape {list(shape)} and datatype {tensor.datatype}; expected "
                               f"scores [{batch}, {num_classes}] or class indices [{batch}]")
