"""Train/eval mode for unlifted torch.export graphs, which refuse `.train()`.

An exported graph bakes batch normalisation's mode into each `aten.batch_norm` call
(its sixth argument). Flipping that argument is all `.train()` would do for these
models; dropout is not used by the firewall's fine-tunes.
"""

from __future__ import annotations

import torch
from torch import fx


def set_batchnorm_training(module: fx.GraphModule, training: bool) -> fx.GraphModule:
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target == torch.ops.aten.batch_norm.default:
            args = list(node.args)
            args[5] = training
            node.args = tuple(args)
    module.recompile()
    return module
