"""The demo's MLServer runtime: onnxruntime's threads as it comes, or pinned for a shared machine."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest

from offline.live_stack import MLSERVER_SERVE, REPO


def _session_options():
    spec = importlib.util.spec_from_file_location("session_options", REPO / "deploy" / "mlserver" / "session_options.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_zero_threads_leaves_onnxruntime_its_defaults():
    options = _session_options().session_options(0)
    assert options.intra_op_num_threads == 0
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_pinned_threads_sleep_when_idle():
    options = _session_options().session_options(1)
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_a_negative_thread_count_is_refused():
    with pytest.raises(ValueError, match="intra_op_threads"):
        _session_options().session_options(-1)


def test_serve_refuses_a_thread_count_that_is_not_a_whole_number(tiny_artifacts):
    result = subprocess.run([str(MLSERVER_SERVE), str(tiny_artifacts), "--grpc-port", "1", "--http-port", "2",
                             "--threads", "two"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "--threads takes a whole number" in result.stderr
