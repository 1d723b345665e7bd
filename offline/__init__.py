"""The offline half of backdoor-firewall: everything that needs torch.

Red-team kit (poisoned datasets and models), building the backdoor expert, the
auxiliary and the exposed model, ONNX export, calibration and evaluation.
"""
