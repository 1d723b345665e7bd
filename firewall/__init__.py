"""The serving half of backdoor-firewall: ONNX scoring rules, thresholds and the sidecar.

Nothing in this package may import torch: the sidecar image ships numpy, onnxruntime
and grpcio only, and `offline` reuses this code so that what is measured offline is
exactly what is served.
"""

__version__ = "0.1.0"
