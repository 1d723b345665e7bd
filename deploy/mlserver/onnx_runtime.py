"""An MLServer runtime that serves one ONNX classifier with onnxruntime.

The demo's and the end-to-end tests' upstream: the production model server as a
team would run it, with no knowledge of the firewall in front of it. `intra_op_threads`
in the model's extra parameters pins onnxruntime's threads (session_options.py).
"""

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from session_options import session_options


class OnnxClassifier(MLModel):
    async def load(self) -> bool:
        parameters = self.settings.parameters
        threads = int((parameters.extra or {}).get("intra_op_threads", 0))
        self._session = ort.InferenceSession(parameters.uri, session_options(threads),
                                             providers=ort.get_available_providers())
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        logits = self._session.run(None, {self._input: x})[0]
        return InferenceResponse(model_name=self.name, id=payload.id,
                                 outputs=[NumpyCodec.encode_output(self._output, logits)])
