"""onnxruntime's threads for the upstream's model.

By default onnxruntime sizes its thread pool to every core and lets idle threads spin,
which takes a core from whatever shares the machine, a firewall sidecar included; a
thread count pins the pool and lets idle threads sleep (the serving benchmark measures
both, docs/PERFORMANCE_NOTES.md). Kept apart from the runtime so that it imports
without MLServer.
"""

import onnxruntime as ort


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    """onnxruntime's defaults for 0; otherwise that many threads, idle ones sleeping."""
    if intra_op_threads < 0:
        raise ValueError(f"intra_op_threads must be 0 (onnxruntime's default) or more, got {intra_op_threads}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0" if intra_op_threads else "1")
    return options
