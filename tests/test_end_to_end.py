"""The live stack: tritonclient -> firewall sidecar -> real MLServer, and the real /metrics.

This process never imports the firewall's own protobuf stubs: tritonclient registers
the same `inference.*` message names, and the firewall runs in its own process anyway.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2

from firewall.artifacts import THRESHOLDS, load_artifacts
from firewall.scoring import FIREWALL, ScoringEngine
from firewall.thresholds import RuleThreshold, Thresholds
from offline.cli import main as offline_cli
from offline.live_stack import free_port, metric, read_metrics, start_firewall, start_mlserver

MODEL = "classifier"


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def mlserver(tiny_artifacts, logs):
    process, port, metrics_port = start_mlserver(tiny_artifacts, logs)
    yield port, metrics_port
    process.stop()


@pytest.fixture(scope="module")
def firewall(tiny_artifacts, mlserver, logs):
    process, port, metrics_port = start_firewall(tiny_artifacts, mlserver[0], logs)
    yield port, metrics_port
    process.stop()


@pytest.fixture(scope="module")
def inputs(tiny_case, tiny_artifacts):
    """Clean inputs the calibrated firewall accepts and triggered ones it rejects, offline."""
    engine = ScoringEngine(load_artifacts(tiny_artifacts))  # the serving rules
    thresholds = Thresholds.load(tiny_artifacts / THRESHOLDS)
    clean = np.load(tiny_case / "test_clean.npz")["x"][:200]
    triggered = np.load(tiny_case / "test_triggered.npz")["x"][:200]
    verdict = lambda x: thresholds.rejects(FIREWALL, thresholds.fused(engine.score(x)[1]))
    accepted, rejected = clean[~verdict(clean)], triggered[verdict(triggered)]
    assert len(accepted) >= 20 and len(rejected) >= 10, "the tiny model should detect some triggered inputs"
    return accepted[:20], rejected[:10]


def infer(port: int, x: np.ndarray, name: str = "input", datatype: str = "FP32") -> np.ndarray:
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    tensor = triton.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return client.infer(MODEL, [tensor], outputs=[triton.InferRequestedOutput("logits")]).as_numpy("logits")


def status_of(port: int, x: np.ndarray, **kwargs) -> str | None:
    try:
        infer(port, x, **kwargs)
        return None
    except triton.InferenceServerException as exc:
        return exc.status()


def upstream_infers(mlserver) -> float:
    return metric(read_metrics(mlserver[1]), "grpc_server_started_total", grpc_method="ModelInfer")


def test_the_sidecar_says_at_start_what_its_cascade_runs(firewall, logs):
    log = (logs / f"firewall-{firewall[0]}.log").read_text()
    assert "firewall: cascade: strip_original (weight 0.5) and strip (weight 0.5) for inputs in the top 5%" in log


def test_clean_inputs_pass_with_the_upstreams_exact_output(firewall, mlserver, inputs):
    clean, _ = inputs
    for row in range(5):
        x = clean[row : row + 1]
        assert np.array_equal(infer(firewall[0], x), infer(mlserver[0], x))
    assert np.array_equal(infer(firewall[0], clean[:8]), infer(mlserver[0], clean[:8]))


def test_triggered_inputs_are_denied_with_verdict_metadata_and_no_score(firewall, mlserver, inputs):
    _, triggered = inputs
    before = upstream_infers(mlserver)
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="FP32", shape=list(triggered[:1].shape))
    request.raw_input_contents.append(triggered[:1].tobytes())
    with grpc.insecure_channel(f"127.0.0.1:{firewall[0]}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=service_pb2.ModelInferRequest.SerializeToString,
                                   response_deserializer=service_pb2.ModelInferResponse.FromString)
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=10)
    error = caught.value
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "firewall rejected" in error.details() or "rejected by the backdoor firewall" in error.details()
    trailing = dict(error.trailing_metadata())
    assert trailing["firewall-verdict"] == "reject" and len(trailing["firewall-request-id"]) == 32
    assert "score" not in error.details().lower()
    assert all(status_of(firewall[0], triggered[i : i + 1]) == "StatusCode.PERMISSION_DENIED"
               for i in range(len(triggered)))
    assert upstream_infers(mlserver) == before


def test_a_batch_is_rejected_when_any_input_is_and_the_message_names_it(firewall, inputs):
    clean, triggered = inputs
    batch = np.concatenate([clean[:3], triggered[:1], clean[3:5]])
    with pytest.raises(triton.InferenceServerException) as caught:
        infer(firewall[0], batch)
    assert caught.value.status() == "StatusCode.PERMISSION_DENIED"
    assert "input 3 of a batch of 6" in caught.value.message()


def test_counters_move_by_exactly_what_was_sent(firewall, inputs):
    clean, triggered = inputs
    before = read_metrics(firewall[1])
    for row in clean[:7]:
        infer(firewall[0], row[None])
    for row in triggered[:4]:
        status_of(firewall[0], row[None])
    after = read_metrics(firewall[1])
    delta = lambda name, **labels: metric(after, name, **labels) - metric(before, name, **labels)
    assert delta("firewall_requests_total", model=MODEL, verdict="accept") == 7
    assert delta("firewall_requests_total", model=MODEL, verdict="reject") == 4
    assert delta("firewall_rejections_total", model=MODEL, rule="firewall") == 4
    assert delta("firewall_score_count", model=MODEL, rule="badexpert") == 11
    assert delta("firewall_upstream_duration_seconds_count", model=MODEL) == 7
    assert metric(after, "firewall_artifacts_info", model=MODEL) == 1
    assert 'le="0.0001"' in "".join(k for k in after if k.startswith("firewall_scoring_duration_seconds_bucket"))


BAD = {
    "wrong shape": dict(x=np.zeros((1, 1, 8, 8), np.float32)),
    "wrong dtype": dict(x=np.zeros((1, 1, 16, 16), np.float64), datatype="FP64"),
    "wrong name": dict(x=np.zeros((1, 1, 16, 16), np.float32), name="pixels"),
    "NaN": dict(x=np.full((1, 1, 16, 16), np.nan, np.float32)),
    "Inf": dict(x=np.full((1, 1, 16, 16), np.inf, np.float32)),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_inputs_are_invalid_and_never_reach_the_upstream(firewall, mlserver, case):
    before = upstream_infers(mlserver)
    assert status_of(firewall[0], **BAD[case]) == "StatusCode.INVALID_ARGUMENT"
    assert upstream_infers(mlserver) == before


def _raw_call(port: int, request: service_pb2.ModelInferRequest) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer",
                                   request_serializer=service_pb2.ModelInferRequest.SerializeToString)
        try:
            call(request, timeout=10)
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()


def test_byte_count_mismatch_and_shared_memory_are_invalid(firewall, mlserver):
    before = upstream_infers(mlserver)
    short = service_pb2.ModelInferRequest(model_name=MODEL)
    short.inputs.add(name="input", datatype="FP32", shape=[1, 1, 16, 16])
    short.raw_input_contents.append(b"\0" * 100)
    assert _raw_call(firewall[0], short) == grpc.StatusCode.INVALID_ARGUMENT
    shm = service_pb2.ModelInferRequest(model_name=MODEL)
    tensor = shm.inputs.add(name="input", datatype="FP32", shape=[1, 1, 16, 16])
    tensor.parameters["shared_memory_region"].string_param = "region0"
    tensor.parameters["shared_memory_byte_size"].int64_param = 1024
    assert _raw_call(firewall[0], shm) == grpc.StatusCode.INVALID_ARGUMENT
    assert upstream_infers(mlserver) == before


def test_typed_fp32_contents_are_scored_like_raw_bytes(firewall, mlserver, inputs):
    clean, triggered = inputs
    for x, expected in ((clean[:1], grpc.StatusCode.OK), (triggered[:1], grpc.StatusCode.PERMISSION_DENIED)):
        request = service_pb2.ModelInferRequest(model_name=MODEL)
        tensor = request.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
        tensor.contents.fp32_contents.extend(x.ravel().tolist())
        assert _raw_call(firewall[0], request) == expected


def test_metadata_calls_and_health_pass(firewall):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    client = triton.InferenceServerClient(f"127.0.0.1:{firewall[0]}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert client.get_model_metadata(MODEL).inputs[0].name == "input"
    with grpc.insecure_channel(f"127.0.0.1:{firewall[0]}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_monitor_mode_forwards_everything_but_counts(tiny_artifacts, mlserver, logs, inputs):
    _, triggered = inputs
    process, port, metrics_port = start_firewall(tiny_artifacts, mlserver[0], logs, "--mode", "monitor")
    try:
        at_start = read_metrics(metrics_port)  # every served rule's series exists before any request, at 0
        for rule in ("firewall", "badexpert", "exposed", "mahalanobis"):
            for series in ("firewall_rejections_total", "firewall_score_count"):
                assert at_start[f'{series}{{model="{MODEL}",rule="{rule}"}}'] == 0
        for row in triggered[:3]:
            assert np.array_equal(infer(port, row[None]), infer(mlserver[0], row[None]))
        values = read_metrics(metrics_port)
        assert metric(values, "firewall_requests_total", model=MODEL, verdict="reject") == 3
        assert metric(values, "firewall_rejections_total", model=MODEL, rule="firewall") == 3
        audit = [json.loads(line) for line in (logs / f"audit-{port}.jsonl").read_text().splitlines()]
        assert len(audit) == 3 and all(entry["mode"] == "monitor" for entry in audit)
    finally:
        process.stop()


@pytest.mark.parametrize("flags, precision",
                         [((), "fp32"), (("--forwarding", "parallel", "--prediction-from-upstream", "logits"), "fp32"),
                          ((), "int8")],
                         ids=["own prediction", "upstream's prediction", "int8 first stage"])
def test_the_sidecar_scores_what_offline_scoring_scores(tiny_case, tiny_artifacts, mlserver, logs, inputs, tmp_path,
                                                        flags, precision):
    """Every rule's score and the fused one, as the audit log records them, are the offline
    engine's for the same input: what `offline calibrate` and `evaluate` measured is what
    runs, the int8 graph included when it was calibrated on. A verdict threshold below
    every score makes the sidecar audit every input."""
    clean, triggered = inputs
    audit_everything = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, audit_everything)
    if precision == "int8":
        assert offline_cli(["quantize", "--artifacts", str(audit_everything),
                        "--clean-data", str(tiny_case / "clean.npz")]) == 0
        assert offline_cli(["calibrate", "--artifacts", str(audit_everything), "--clean-data", str(tiny_case / "calib.npz"),
                        "--precision", "int8"]) == 0
    thresholds = Thresholds.load(audit_everything / THRESHOLDS)
    assert thresholds.precision == precision
    engine = ScoringEngine(load_artifacts(audit_everything), precision=precision)
    Thresholds(thresholds.target_fpr, {**thresholds.rules, FIREWALL: RuleThreshold(-np.inf, 1.0, 1)},
               thresholds.fusion, thresholds.precision).save(audit_everything / THRESHOLDS)
    sent = np.concatenate([clean[:6], triggered[:4]])
    process, port, _ = start_firewall(audit_everything, mlserver[0], logs, "--mode", "monitor", *flags)
    try:
        for row in sent:
            infer(port, row[None])
        audit = [json.loads(line) for line in (logs / f"audit-{port}.jsonl").read_text().splitlines()]
    finally:
        process.stop()
    assert f"{precision} first stage" in (logs / f"firewall-{port}.log").read_text()
    assert len(audit) == len(sent)
    fusion = thresholds.fusion
    in_band = 0  # the default cascade: inputs in its band also run the STRIP rules, the others do not
    for row, entry in zip(sent, audit):
        offline = engine.score(row[None], rules=[*fusion.first, *fusion.reachable_later])[1]
        offline[FIREWALL] = thresholds.fused(offline)
        if fusion.in_band(fusion.first_stage_evidence(offline))[0]:
            in_band += 1
        else:
            offline = {rule: value for rule, value in offline.items() if rule not in fusion.reachable_later}
        served = {rule: values[0] for rule, values in entry["scores"].items() if values[0] is not None}
        assert set(served) == set(offline)
        for rule, value in offline.items():
            assert served[rule] == pytest.approx(float(value[0]), rel=1e-5, abs=1e-6), rule
    assert 0 < in_band < len(sent)


def test_upstream_down_is_unavailable_and_the_firewall_recovers(tiny_artifacts, logs, inputs):
    clean, _ = inputs
    upstream, upstream_port, _ = start_mlserver(tiny_artifacts, logs)
    process, port, _ = start_firewall(tiny_artifacts, upstream_port, logs)
    try:
        assert status_of(port, clean[:1]) is None
        upstream.stop()
        assert status_of(port, clean[:1]) == "StatusCode.UNAVAILABLE"
        upstream, _, _ = start_mlserver(tiny_artifacts, logs, grpc_port=upstream_port)
        deadline = time.monotonic() + 30
        while status_of(port, clean[:1]) is not None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert status_of(port, clean[:1]) is None
    finally:
        process.stop()
        upstream.stop()


def test_an_upstream_pinned_to_one_thread_answers_like_the_default_one(tiny_artifacts, mlserver, logs, inputs):
    clean, _ = inputs
    upstream, upstream_port, _ = start_mlserver(tiny_artifacts, logs, threads=1)
    try:
        assert np.allclose(infer(upstream_port, clean[:8]), infer(mlserver[0], clean[:8]), atol=1e-5)
    finally:
        upstream.stop()


def test_sigterm_drains_in_flight_requests(tiny_artifacts, mlserver, logs, inputs):
    clean, _ = inputs
    process, port, _ = start_firewall(tiny_artifacts, mlserver[0], logs)
    results = []
    threads = [threading.Thread(target=lambda: results.append(status_of(port, clean[:16]))) for _ in range(8)]
    for thread in threads:
        thread.start()
    time.sleep(0.05)
    code = process.stop(signal.SIGTERM)
    for thread in threads:
        thread.join()
    assert code == 0
    assert results.count(None) + results.count("StatusCode.UNAVAILABLE") == 8
    assert "StatusCode.CANCELLED" not in results and "StatusCode.INTERNAL" not in results


def test_a_tampered_model_stops_the_firewall_at_start(tiny_artifacts, tmp_path):
    art = shutil.copytree(tiny_artifacts, tmp_path / "art")
    with open(art / "auxiliary.onnx", "r+b") as handle:
        handle.seek(100)
        handle.write(b"\xff")
    result = subprocess.run([sys.executable, "-m", "firewall", "serve", "--artifacts", str(art), "--upstream",
                             "127.0.0.1:1", "--listen", f"127.0.0.1:{free_port()}", "--metrics-port",
                             str(free_port())], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "auxiliary.onnx" in result.stderr and "modified" in result.stderr


def _artifacts_that_fail_to_score(tiny_artifacts: Path, out: Path) -> Path:
    """A consistent (re-hashed) artifacts set whose STRIP bank cannot be superimposed, with
    the cascade's band opened to every input so that the STRIP rules always run."""
    from firewall.artifacts import sha256_file

    art = shutil.copytree(tiny_artifacts, out)
    np.save(art / "strip_bank.npy", np.zeros((4, 1, 8, 8), np.float32))
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"]["strip_bank.npy"]["sha256"] = sha256_file(art / "strip_bank.npy")
    (art / "manifest.json").write_text(json.dumps(manifest))
    thresholds = json.loads((art / "thresholds.json").read_text())
    thresholds["fusion"]["band_low"] = "-inf"
    (art / "thresholds.json").write_text(json.dumps(thresholds))
    return art


@pytest.mark.parametrize("on_error, expected", [("reject", "StatusCode.PERMISSION_DENIED"), ("allow", None)])
def test_a_scoring_failure_fails_closed_unless_allowed(tiny_artifacts, mlserver, logs, inputs, tmp_path,
                                                       on_error, expected):
    clean, _ = inputs
    art = _artifacts_that_fail_to_score(tiny_artifacts, tmp_path / "art")
    process, port, metrics_port = start_firewall(art, mlserver[0], logs, "--on-error", on_error)
    try:
        assert status_of(port, clean[:1]) == expected
        assert metric(read_metrics(metrics_port), "firewall_requests_total", model=MODEL, verdict="error") == 1
    finally:
        process.stop()


@pytest.fixture(scope="module")
def parallel_firewall(tiny_artifacts, mlserver, logs):
    process, port, metrics_port = start_firewall(tiny_artifacts, mlserver[0], logs, "--forwarding", "parallel",
                                                 "--prediction-from-upstream", "logits")
    yield port, metrics_port
    process.stop()


def test_parallel_forwarding_with_the_upstreams_prediction_gives_the_same_verdicts(parallel_firewall, mlserver,
                                                                                   inputs):
    clean, triggered = inputs
    for row in range(len(clean)):
        x = clean[row : row + 1]
        assert np.array_equal(infer(parallel_firewall[0], x), infer(mlserver[0], x))
    assert all(status_of(parallel_firewall[0], triggered[i : i + 1]) == "StatusCode.PERMISSION_DENIED"
               for i in range(len(triggered)))


def test_parallel_forwarding_lets_the_upstream_see_rejected_inputs(parallel_firewall, mlserver, inputs):
    """The documented price of parallel mode: the answer is withheld, the computation is not."""
    _, triggered = inputs
    before = upstream_infers(mlserver)
    assert status_of(parallel_firewall[0], triggered[:1]) == "StatusCode.PERMISSION_DENIED"
    assert upstream_infers(mlserver) == before + 1


def test_a_missing_prediction_output_fails_closed(tiny_artifacts, mlserver, logs, inputs):
    clean, _ = inputs
    process, port, _ = start_firewall(tiny_artifacts, mlserver[0], logs, "--forwarding", "parallel",
                                      "--prediction-from-upstream", "probabilities")
    try:
        assert status_of(port, clean[:1]) == "StatusCode.PERMISSION_DENIED"
    finally:
        process.stop()


def test_prediction_from_upstream_refuses_sequential_forwarding(tiny_artifacts):
    result = subprocess.run([sys.executable, "-m", "firewall", "serve", "--artifacts", str(tiny_artifacts),
                             "--upstream", "127.0.0.1:1", "--prediction-from-upstream", "logits"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "--forwarding parallel" in result.stderr
