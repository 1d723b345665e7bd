"""Replays of an onnxruntime session as captured CUDA graphs, one per batch size.

On a GPU the fused first stage is a few hundred small kernels, and launching them one by
one from the host costs more than running them: session 14 measured 4.3 ms at batch 1 for
four ResNet-18s that an H100 computes in a fraction of that, and 4.5 ms at batch 32.
onnxruntime's CUDA provider can capture a session's kernels once and replay them with one
launch, on three conditions: every node runs on CUDA, the shapes never change, and the
inputs and outputs stay at the same device addresses. A `BoundReplay` holds one batch
size's device buffers, bound once, so the last two hold; the first is the model's, and a
session that cannot be captured stays an ordinary one (`ModelSet`).

Each batch size is its own graph (onnxruntime's `gpu_graph_id`), so a lone request pays
for one row rather than for the largest batch, and a replayed graph never redoes cuDNN's
per-shape set-up that made changing batch sizes cost 300 ms a call without graphs.
"""

from __future__ import annotations

import threading

import numpy as np
import onnxruntime as ort

CUDA = "CUDAExecutionProvider"
# onnxruntime's CUDA provider runs a graph this many times uncaptured (to settle its memory
# arena) before it captures it on the next run; the replay's first runs are these.
RUNS_BEFORE_CAPTURE = 2
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(double)": np.float64}
# Several graphs per session (`gpu_graph_id`) came with onnxruntime 1.18; before, a session
# has one graph, and a second batch size would replay the first one's buffers.
SEVERAL_GRAPHS_SINCE = (1, 18)


def capture_sizes(sizes: tuple[int, ...], version: str = ort.__version__) -> tuple[int, ...]:
    """The batch sizes (ascending) this onnxruntime can capture in one session: all of them,
    or only the largest where it holds one graph a session."""
    several = tuple(int(part) for part in version.split(".")[:2]) >= SEVERAL_GRAPHS_SINCE
    return sizes if several else sizes[-1:]


def with_cuda_graphs(providers: list[str | tuple[str, dict]]) -> list[str | tuple[str, dict]] | None:
    """`providers` with graph capture asked of the CUDA provider, or None where CUDA is not
    the first choice (capture needs every node on it)."""
    first, *rest = providers
    name, options = (first, {}) if isinstance(first, str) else first
    if name != CUDA:
        return None
    return [(CUDA, {**options, "enable_cuda_graph": "1"}), *rest]


class BoundReplay:
    """One batch size of one session: input and output buffers on `device`, bound once.

    On a session opened `with_cuda_graphs` each run after the first few replays the captured
    graph; elsewhere (the CPU, in the tests) it is an ordinary run through the same binding.
    Runs are serialised under `lock`: the buffers are shared by every caller, and onnxruntime
    does not replay one session's graphs from several threads at once, so the replays of
    one session share one lock.
    """

    def __init__(self, session: ort.InferenceSession, input_shape: tuple[int, ...], rows: int,
                 graph_id: int = 0, device: str = "cuda", lock: threading.Lock | None = None):
        self.rows = rows
        self._session = session
        self._options = ort.RunOptions()
        self._options.add_run_config_entry("gpu_graph_id", str(graph_id))
        self._input = ort.OrtValue.ortvalue_from_shape_and_type((rows, *input_shape), np.float32, device, 0)
        self._outputs = [ort.OrtValue.ortvalue_from_shape_and_type(_output_shape(meta, rows),
                                                                   _numpy_type(meta), device, 0)
                         for meta in session.get_outputs()]
        self._binding = session.io_binding()
        self._binding.bind_ortvalue_input(session.get_inputs()[0].name, self._input)
        for meta, value in zip(session.get_outputs(), self._outputs):
            self._binding.bind_ortvalue_output(meta.name, value)
        self._lock = lock or threading.Lock()
        # on the CPU numpy() is a view of the bound buffer, which the next run overwrites; from
        # the device it is already a fresh host array
        self._copy_out = device == "cpu"
        zeros = np.zeros((rows, *input_shape), np.float32)
        for _ in range(RUNS_BEFORE_CAPTURE + 1):  # the last of these captures: a failure surfaces here
            self.run(zeros)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        """The session's outputs for exactly `rows` inputs, copied back to the host."""
        if len(x) != self.rows:
            raise ValueError(f"this replay runs {self.rows} rows, not {len(x)}")
        with self._lock:
            self._input.update_inplace(np.ascontiguousarray(x, np.float32))
            self._session.run_with_iobinding(self._binding, self._options)
            self._binding.synchronize_outputs()  # the graph runs on the provider's own stream
            return [value.numpy().copy() if self._copy_out else value.numpy() for value in self._outputs]


def _output_shape(meta: ort.NodeArg, rows: int) -> tuple[int, ...]:
    """The output's shape at `rows` inputs: its first axis is the batch, every other must be
    fixed in the graph, or the buffer could not be allocated before the run."""
    rest = meta.shape[1:]
    if not all(isinstance(d, int) for d in rest):
        raise ValueError(f"output {meta.name!r} has a shape {meta.shape} not fixed beyond the batch axis")
    return (rows, *rest)


def _numpy_type(meta: ort.NodeArg) -> type:
    if meta.type not in _NUMPY_TYPES:
        raise ValueError(f"output {meta.name!r} is a {meta.type}, which a bound replay does not hold")
    return _NUMPY_TYPES[meta.type]
