"""With --prediction-from-upstream the firewall reads M's prediction from the upstream's answer."""

import numpy as np
import pytest

from tritonclient.grpc import service_pb2 as pb

from firewall.upstream_prediction import UnreadablePrediction, prediction_from_response


def response(name, datatype, values, shape, raw=True):
    """A response as Triton's own protocol stubs build it."""
    message = pb.ModelInferResponse(model_name="classifier")
    tensor = message.outputs.add(name=name, datatype=datatype, shape=list(shape))
    if raw:
        message.raw_output_contents.append(np.ascontiguousarray(values).tobytes())
    else:
        getattr(tensor.contents, {"FP32": "fp32_contents", "INT64": "int64_contents"}[datatype]).extend(
            np.ravel(values).tolist())
    return message


LOGITS = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]], np.float32)


@pytest.mark.parametrize("raw", [True, False])
def test_scores_give_their_argmax(raw):
    got = prediction_from_response(response("logits", "FP32", LOGITS, LOGITS.shape, raw), "logits", 2, 3)
    assert got.tolist() == [1, 0]


def test_class_indices_are_taken_as_they_are():
    labels = np.array([[2], [0]], np.int64)
    assert prediction_from_response(response("label", "INT64", labels, (2, 1)), "label", 2, 3).tolist() == [2, 0]


@pytest.mark.parametrize("raw, output, batch, message", [
    (response("logits", "FP32", LOGITS, LOGITS.shape), "probabilities", 2, "no output 'probabilities'"),
    (response("logits", "FP32", LOGITS, LOGITS.shape), "logits", 3, "expected scores"),
    (response("label", "INT64", np.array([7, 0], np.int64), (2,)), "label", 2, "outside"),
    (response("logits", "BYTES", np.zeros(6, np.float32), (2, 3)), "logits", 2, "datatype"),
])
def test_unreadable_predictions_are_refused_with_the_reason(raw, output, batch, message):
    with pytest.raises(UnreadablePrediction, match=message):
        prediction_from_response(raw, output, batch, 3)
