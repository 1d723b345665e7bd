"""An MLServer runtime that serves one ONNX classifier with onnxruntime.

The demo's and the end-to-end tests' upstream: the production model server as a
team would run it, with no knowledge of the firewall in front of it. `intra_op_threads`
in the model's extra parameters pins onnxruntime's threads (session_options.py). The
model runs on the GPU when the installed onnxruntime offers CUDA, as a team's GPU server
would; the providers it runs on are written to the log.
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
        providers = ["CPUExecutionProvider"]
        if "CUDAExecutionProvider" in ort.get_available_providers():  # cuDNN as the firewall runs it, a fair floor
            providers.insert(0, ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"}))
        self._session = ort.InferenceSession(parameters.uri, session_options(threads), providers=providers)
        print(f"onnxruntime providers: {','.join(self._session.get_providers())}", flush=True)
        self._input = self._session.get_inputs()[0].name
        self._output = self._session.get_outputs()[0].name
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32, copy=False)
        logits = self._session.run(None, {self._input: x})[0]
        return InferenceResponse(model_name=self.name, id=payload.id,
                                 outputs=[NumpyCodec.encode_output(self._output, logits)])
