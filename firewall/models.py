"""onnxruntime sessions for the models of an artifacts directory, tuned for serving."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from firewall.artifacts import BY_CLASS_OUTPUTS, FUSED_FILES, PREDICTION_OUTPUT, TARGET_CLASS_RULE, Artifacts
from firewall.cuda_graph import CUDA, BoundReplay, capture_sizes, with_cuda_graphs
from firewall.probabilities import softmax

log = logging.getLogger("firewall.models")


# cuDNN's convolution algorithms chosen by its heuristics rather than by timing each on
# the first run of every input shape (onnxruntime's default, EXHAUSTIVE). Measured on an
# H100 with four ResNet-18s in one fused graph: warming up batch sizes 1-32 took 49 s
# instead of 10 s, and batch 1 ran p50 4.05 / p99 18.7 ms against 4.29 / 4.69 ms.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}


def default_providers() -> list[str | tuple[str, dict]]:
    """CUDA first when the installed onnxruntime offers it, the CPU always as fallback."""
    cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    return [*([("CUDAExecutionProvider", dict(CUDA_OPTIONS))] if cuda else []), "CPUExecutionProvider"]


@dataclass(frozen=True)
class SessionTuning:
    """How onnxruntime may use the machine.

    The sidecar shares its CPUs with the model server it protects. onnxruntime's
    default is to size its thread pool to every core and to let idle threads spin,
    which on a shared machine takes cycles from the upstream exactly when both are
    busy; `spinning=False` makes idle threads sleep instead.
    """

    threads: int = 0  # intra-op threads; 0 lets onnxruntime choose
    spinning: bool = True
    # On CUDA every first-stage batch is padded to this many rows: onnxruntime's CUDA
    # convolutions redo their cuDNN set-up whenever the batch size differs from the last
    # call's (measured on an H100 with four ResNet-18s: 300 ms per call when the size
    # changes every call, 4.5 ms at a fixed 32 rows against 4.3 ms at 1 row).
    gpu_batch: int = 32
    # On CUDA each batch size of this ladder (and gpu_batch) is captured once as a CUDA graph
    # and replayed (firewall/cuda_graph.py); a batch runs on the smallest size that holds it.
    # Off, or where a graph cannot be captured, every batch runs padded to gpu_batch.
    cuda_graph_rows: tuple[int, ...] = (1, 8)
    cuda_graphs: bool = True

    @property
    def graph_rows(self) -> tuple[int, ...]:
        return tuple(sorted({*(r for r in self.cuda_graph_rows if r < self.gpu_batch), self.gpu_batch}))

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if self.threads:
            options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        return options


class UncapturedBlocks:
    """A CUDA session that could not be captured, run on blocks of one size: the one shape
    its cuDNN set-up was made for (SessionTuning.gpu_batch)."""

    def __init__(self, session: ort.InferenceSession, input_name: str, rows: int):
        self.rows, self._session, self._input_name = rows, session, input_name

    def run(self, block: np.ndarray) -> list[np.ndarray]:
        return self._session.run(None, {self._input_name: block})


class ModelSet:
    """M, B, M' and E as separate sessions, and the fused first-stage graphs.

    A session opens on its first use: the sidecar serves one fused graph (and E only
    when the cascade band is open), and on a GPU every unused session would hold its
    weights in device memory for nothing. The sidecar warms up before it reports
    ready, so no request pays for an opening.
    """

    def __init__(self, artifacts: Artifacts, providers: list[str | tuple[str, dict]] | None = None,
                 tuning: SessionTuning = SessionTuning(), precision: str = "fp32", strip_copies: int = 0):
        self._artifacts = artifacts
        manifest = artifacts.manifest
        self._target_row = _target_class_row(manifest.suspected_target, manifest.num_classes)
        self.precision = precision  # of the fused graphs (the separate models are float)
        self._options = tuning.session_options()
        self._providers = providers or default_providers()
        self._gpu_batch = tuning.gpu_batch
        self._graph_rows = tuning.graph_rows if tuning.cuda_graphs else ()
        # The sidecar runs the separate networks (M and E for STRIP in the cascade's band) on
        # an input's superimposed copies, this many rows each: on CUDA they also capture a
        # graph of that size, so that one band input is one replay rather than several blocks.
        self._strip_copies = strip_copies
        self._opening = threading.Lock()  # the batcher and the cascade's thread may both open one
        self.input_name = artifacts.manifest.input_name
        self.sessions: dict[str, ort.InferenceSession] = {}
        self.output_names: dict[str, list[str]] = {}
        # role -> the fixed batch sizes its CUDA session runs on, smallest first: a replay per
        # captured size, or one block size uncaptured; no entry for a session on the CPU
        self._blocks: dict[str, list[BoundReplay | UncapturedBlocks]] = {}

    @property
    def providers(self) -> list[str]:
        """What actually runs (onnxruntime silently falls back to the CPU), read off the
        first session opened, or the original model's when none is open yet."""
        return (next(iter(self.sessions.values())) if self.sessions else self.session("original")).get_providers()

    def describe_capture(self) -> str | None:
        """Which open CUDA sessions replay captured graphs, at which batch sizes, and which run
        uncaptured; None off CUDA."""
        if not self._blocks:
            return None
        by_sizes: dict[tuple[int, ...], list[str]] = {}
        uncaptured = []
        for role, blocks in sorted(self._blocks.items()):
            if isinstance(blocks[0], BoundReplay):
                by_sizes.setdefault(tuple(block.rows for block in blocks), []).append(role)
            else:
                uncaptured.append(role)
        captured = [f"{', '.join(roles)} at {', '.join(map(str, sizes))} rows"
                    for sizes, roles in sorted(by_sizes.items())]
        return "; ".join([*captured, *([f"uncaptured: {', '.join(uncaptured)}"] if uncaptured else [])])

    def capture_ladder(self, role: str) -> tuple[int, ...]:
        """The batch sizes `role` is captured at on CUDA, ascending: the tuning's ladder, and for
        the separate networks one input's STRIP copies too; () where graphs are off."""
        if not self._graph_rows:
            return ()
        extra = {self._strip_copies} if self._strip_copies and role not in FUSED_FILES else set()
        return capture_sizes(tuple(sorted({*self._graph_rows, *extra})))

    def session(self, role: str) -> ort.InferenceSession:
        if role not in self.sessions:
            if role not in FUSED_FILES and role not in self._artifacts.model_roles:
                raise KeyError(f"no model '{role}' in this artifacts set")
            with self._opening:
                if role not in self.sessions:
                    opened, blocks = self._captured(role) or self._uncaptured(role)
                    self.output_names[role] = [o.name for o in opened.get_outputs()]
                    if blocks:
                        self._blocks[role] = blocks
                    self.sessions[role] = opened
        return self.sessions[role]

    def _open(self, role: str, providers: list[str | tuple[str, dict]]) -> ort.InferenceSession:
        return ort.InferenceSession(str(self._artifacts.model_path(role, self.precision)), self._options,
                                    providers=providers)

    def _uncaptured(self, role: str) -> tuple[ort.InferenceSession, list[UncapturedBlocks]]:
        """The role's ordinary session, and on CUDA its one block size."""
        opened = self._open(role, self._providers)
        on_cuda = opened.get_providers()[0] == CUDA
        return opened, [UncapturedBlocks(opened, self.input_name, self._gpu_batch)] if on_cuda else []

    def _captured(self, role: str) -> tuple[ort.InferenceSession, list[BoundReplay]] | None:
        """The role's session with a CUDA graph captured for each batch size of the ladder, or
        None where CUDA is not asked for or onnxruntime cannot capture this graph (a node it
        places on the CPU, an output whose shape is not fixed): then it runs uncaptured.
        Where the CUDA provider did not load, the session it opened is an ordinary CPU one."""
        ladder = self.capture_ladder(role)
        providers = with_cuda_graphs(self._providers) if ladder else None
        if providers is None:
            return None
        try:
            opened = self._open(role, providers)
            if opened.get_providers()[0] != CUDA:
                return opened, []
            shape, lock = tuple(self._artifacts.manifest.input_shape), threading.Lock()
            return opened, [BoundReplay(opened, shape, rows, graph_id=i, lock=lock) for i, rows in enumerate(ladder)]
        except Exception as refused:  # onnxruntime's refusals have no common type; an uncaptured run is the fallback
            log.warning("%s runs without CUDA graphs: %s", role, refused)
            return None

    def run(self, role: str, x: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self._outputs(role, x)  # first: running opens the session, which records its output names
        return dict(zip(self.output_names[role], outputs))

    def _outputs(self, role: str, x: np.ndarray) -> list[np.ndarray]:
        """One run of `role` on x. On CUDA it runs on blocks of fixed sizes, the last one
        padded with zeros, so that the kernels only ever see the shapes they were set up for
        (SessionTuning.gpu_batch): the first stage's batches and the cascade's superimposed
        copies (64 per input in the band, so 64, 128, ... rows) alike. A batch runs on the
        smallest size that holds it (blocks of the largest beyond): captured, one of the
        ladder's; uncaptured, the one size there is."""
        session = self.session(role)  # opened first: opening records where it runs
        x = np.ascontiguousarray(x, np.float32)
        sizes = self._blocks.get(role)
        if sizes is None:
            return session.run(None, {self.input_name: x})
        block = next((b for b in sizes if b.rows >= len(x)), sizes[-1])
        n, rows = len(x), block.rows
        outputs = [block.run(_filled(x[i : i + rows], rows)) for i in range(0, n, rows)]
        return [np.concatenate(parts)[:n] for parts in zip(*outputs)]

    def first_stage(self, x: np.ndarray, predict: bool = True) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
        """(M's prediction or None, {rule: its score for every class}) from one fused-graph run,
        and the suspected target's rule, which needs no network.

        Without `predict` the graph without M runs: the prediction comes from elsewhere."""
        role = "fused" if predict else "fused_without_original"
        outputs = self.run(role, x)
        by_class = {rule: outputs[name] for rule, name in BY_CLASS_OUTPUTS.items() if name in outputs}
        by_class[TARGET_CLASS_RULE] = np.broadcast_to(self._target_row, (len(x), len(self._target_row)))
        return (outputs[PREDICTION_OUTPUT].astype(np.int64) if predict else None), by_class

    def logits(self, role: str, x: np.ndarray) -> np.ndarray:
        return self._outputs(role, x)[0]

    def probs(self, role: str, x: np.ndarray) -> np.ndarray:
        return softmax(self.logits(role, x))


def _target_class_row(suspected_target: int | None, num_classes: int) -> np.ndarray:
    """[K]: the suspected-target rule's score for every class (firewall/rules/target_class.py), 1 in the
    suspected target's column, all 0 where the build named none; the same for every input, so made once and
    broadcast to each batch (read-only) rather than allocated per request."""
    row = np.zeros(num_classes, np.float32)
    if suspected_target is not None:
        row[suspected_target] = 1.0
    return row


def _filled(rows_of_x: np.ndarray, rows: int) -> np.ndarray:
    """A block of exactly `rows` rows: `rows_of_x` itself, or followed by zero rows where it is
    the batch's short last block (the padding's outputs are cut off again)."""
    if len(rows_of_x) == rows:
        return rows_of_x
    block = np.zeros((rows, *rows_of_x.shape[1:]), np.float32)
    block[: len(rows_of_x)] = rows_of_x
    return block
