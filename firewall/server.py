"""The sidecar: an Open Inference Protocol v2 gRPC proxy that scores before it forwards.

ModelInfer is decoded, validated, scored by the micro-batcher and then rejected or
forwarded; with `--forwarding parallel` it is forwarded while it is scored and the
answer is held back until the verdict. Requests travel to the upstream as the
client's own bytes and responses come back as the upstream's own bytes: nothing the
firewall does can alter an accepted answer. The other five RPCs pass straight through.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from firewall.artifacts import PREDICTION_OUTPUT, THRESHOLDS, Artifacts, load_artifacts
from firewall.audit import AuditLog
from firewall.batcher import MicroBatcher
from firewall.config import ServeConfig
from firewall.errors import ArtifactError
from firewall.fusion import Fusion
from firewall.metrics import FirewallMetrics
from firewall.models import SessionTuning
from firewall.probabilities import prob_of
from firewall.protocol import grpc_predict_v2_pb2 as pb
from firewall.rules import RULES, first_stage_rules
from firewall.scoring import FIREWALL, ScoringEngine
from firewall.tensors import InvalidInput, decode_input
from firewall.thresholds import Thresholds
from firewall.upstream_prediction import prediction_from_response

SERVICE = "inference.GRPCInferenceService"
PASSTHROUGH = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata")
MAX_MESSAGE = 256 * 1024 * 1024
_HOP_BY_HOP = ("content-type", "user-agent", "te", "grpc-", ":")
_FIRST_STAGE_EVIDENCE = "first stage evidence"  # a key no rule is named
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]


def _identity(data: bytes) -> bytes:
    return data


def _serving_fusion(thresholds: Thresholds, artifacts: Artifacts) -> Fusion:
    """The calibrated fusion, checked to start with rules the artifacts' fused graph computes."""
    fusion = thresholds.fusion
    first_stage = first_stage_rules(artifacts.model_roles)
    if (fusion is None or any(rule not in first_stage for rule in fusion.first)
            or any(rule not in RULES for rule in fusion.later)):
        raise ArtifactError("thresholds.json holds no fusion this firewall can serve (its first stage must be "
                            f"among {list(first_stage)}): run `offline calibrate` again")
    return fusion


class Firewall:
    def __init__(self, config: ServeConfig):
        self.config = config
        artifacts = load_artifacts(config.artifacts)
        self.manifest = artifacts.manifest
        self.thresholds = Thresholds.load(artifacts.path(THRESHOLDS))
        self.fusion = _serving_fusion(self.thresholds, artifacts)
        tuning = SessionTuning(threads=config.threads, spinning=config.spinning, gpu_batch=config.max_batch_size)
        self.engine = ScoringEngine(artifacts, rules=self.fusion.rules, tuning=tuning,
                                    precision=self.thresholds.precision)
        self.thresholds.require([*self.fusion.rules, FIREWALL])
        self.model = self.manifest.name
        self.metrics = FirewallMetrics()
        self.metrics.artifacts_info.labels(self.model, artifacts.manifest_sha256).set(1)
        self.rule_metrics = {rule: (self.metrics.score.labels(self.model, rule),
                                    self.metrics.rejections.labels(self.model, rule))
                             for rule in (*self.fusion.first, *self.fusion.reachable_later, FIREWALL)}
        self.audit = AuditLog(config.audit_log)
        self.health = health.aio.HealthServicer()
        self.batcher: MicroBatcher | None = None
        self.later_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cascade")
        self.channel: grpc.aio.Channel | None = None
        self.upstream_calls: dict[str, grpc.aio.UnaryUnaryMultiCallable] = {}
        self.server: grpc.aio.Server | None = None

    # -- scoring -----------------------------------------------------------------
    @property
    def _predicts(self) -> bool:
        """Whether the first stage computes M's prediction (not when the upstream's is used)."""
        return self.config.prediction_from_upstream is None

    def _first_stage(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """One batch's first stage, on the scoring thread: every rule's score for every
        class and their fused evidence for every class, so that each request only picks
        its predicted class's column (the prediction may arrive later, from the upstream)."""
        first = self.engine.first_stage(x, predict=self._predicts)
        first[_FIRST_STAGE_EVIDENCE] = self.fusion.first_stage_evidence(first)
        return first

    def warm_up(self) -> None:
        """Open what requests will use before the server reports SERVING: the served
        fused graph, and the cascade's sessions when its band is open."""
        self.engine.warm_up(predict=self._predicts, later_rules=self.fusion.reachable_later)

    def _on_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.labels(self.model).observe(size)
        self.metrics.scoring_duration.labels(self.model).observe(seconds)

    async def _scores(self, x: np.ndarray, upstream: asyncio.Task | None) -> dict[str, np.ndarray]:
        """Every rule's score and the fused verdict score for the inputs of one request.

        The cheap stage runs batched with other requests; with the prediction taken from
        the upstream it overlaps the upstream call, and the predicted class is picked
        once the answer is in. The costly rules run only for the cascade's band.
        """
        first = await self.batcher.score(x)
        if self.config.prediction_from_upstream:
            answer = pb.ModelInferResponse.FromString(await upstream)
            yhat = prediction_from_response(answer, self.config.prediction_from_upstream, len(x),
                                            self.manifest.num_classes)
        else:
            yhat = first[PREDICTION_OUTPUT]
        scores = {rule: prob_of(first[rule], yhat) for rule in self.fusion.first}
        first_evidence = prob_of(first[_FIRST_STAGE_EVIDENCE], yhat)
        band = self.fusion.in_band(first_evidence)
        for rule in self.fusion.reachable_later:
            scores[rule] = np.full(len(x), np.nan)
        if band.any():
            started = time.perf_counter()
            _, later = await asyncio.get_running_loop().run_in_executor(
                self.later_executor, self.engine.score, x[band], yhat[band], self.fusion.reachable_later)
            self.metrics.scoring_duration.labels(self.model).observe(time.perf_counter() - started)
            for rule, values in later.items():
                scores[rule][band] = values
        scores[FIREWALL] = self.fusion.complete(first_evidence, scores)
        return scores

    def _record(self, scores: dict[str, np.ndarray]) -> None:
        for rule, values in scores.items():
            histogram, rejections = self.rule_metrics[rule]
            scored = values[~np.isnan(values)]  # NaN: the cascade skipped this costly rule for this input
            for value in scored.tolist():
                histogram.observe(value)
            over = int(self.thresholds.rejects(rule, scored).sum())
            if over:
                rejections.inc(over)

    # -- forwarding --------------------------------------------------------------
    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self.config.upstream_timeout_s if remaining is None else min(remaining, self.config.upstream_timeout_s)

    async def _call(self, method: str, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """The upstream's answer as bytes; its failures are counted and raised as AioRpcError."""
        metadata = tuple((k, v) for k, v in context.invocation_metadata() or () if not k.startswith(_HOP_BY_HOP))
        started = time.perf_counter()
        try:
            return await self.upstream_calls[method](raw, timeout=self._timeout(context), metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            self.metrics.upstream_errors.labels(self.model, exc.code().name).inc()
            raise
        finally:
            if method == "ModelInfer":
                self.metrics.upstream_duration.labels(self.model).observe(time.perf_counter() - started)

    async def _relay(self, answer: Awaitable[bytes], context: grpc.aio.ServicerContext) -> bytes:
        try:
            return await answer
        except grpc.aio.AioRpcError as exc:
            await context.abort(exc.code(), f"upstream: {exc.details()}")

    def _passthrough(self, method: str):
        async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self._relay(self._call(method, raw, context), context)

        return handler

    # -- ModelInfer --------------------------------------------------------------
    async def _refuse(self, context, code: grpc.StatusCode, verdict: str, request_id: str, message: str) -> None:
        self.metrics.requests.labels(self.model, verdict).inc()
        context.set_trailing_metadata((("firewall-verdict", verdict), ("firewall-request-id", request_id)))
        await context.abort(code, message)

    async def model_infer(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        request_id = uuid.uuid4().hex
        try:
            request = pb.ModelInferRequest.FromString(raw)
            if request.model_name != self.model:
                raise InvalidInput(f"this firewall protects model '{self.model}', not '{request.model_name}'")
            x = decode_input(request, self.manifest)
        except (InvalidInput, DecodeError) as exc:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid", request_id, str(exc))

        # Parallel forwarding: the upstream computes while we score; its answer is held
        # back until the verdict and dropped if the input is rejected.
        upstream = (asyncio.create_task(self._call("ModelInfer", raw, context))
                    if self.config.forwarding == "parallel" else None)
        try:
            verdict = await self._verdict(request_id, request, x, raw, upstream, context)
        except BaseException:
            if upstream is not None:
                upstream.cancel()
            raise
        response = await self._relay(upstream if upstream is not None else self._call("ModelInfer", raw, context),
                                     context)
        self.metrics.requests.labels(self.model, verdict).inc()
        return response

    async def _verdict(self, request_id: str, request: pb.ModelInferRequest, x: np.ndarray, raw: bytes,
                       upstream: asyncio.Task | None, context: grpc.aio.ServicerContext) -> str:
        """accept, reject (monitor mode only: enforce aborts the call) or error (--on-error allow)."""
        try:
            scores = await self._scores(x, upstream)
        except grpc.aio.AioRpcError as exc:  # the upstream failed before it gave its prediction
            await context.abort(exc.code(), f"upstream: {exc.details()}")
        except Exception as exc:  # fail closed unless told otherwise
            self.audit.write(request_id=request_id, model=self.model, verdict="error", error=repr(exc),
                             input_sha256=hashlib.sha256(raw).hexdigest())
            if self.config.on_error == "reject":
                await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "error", request_id,
                                   "rejected by the backdoor firewall: the input could not be scored")
            return "error"
        self._record(scores)
        rejected = np.flatnonzero(self.thresholds.rejects(FIREWALL, scores[FIREWALL]))
        if not rejected.size:
            return "accept"
        self.audit.write(
            request_id=request_id, client_request_id=request.id, model=self.model, mode=self.config.mode,
            verdict="reject", rejected_inputs=rejected.tolist(),
            scores={rule: [None if np.isnan(v) else float(v) for v in values] for rule, values in scores.items()},
            thresholds={rule: self.thresholds.rules[rule].threshold for rule in scores},
            input_sha256=hashlib.sha256(request.raw_input_contents[0] if request.raw_input_contents
                                        else x.tobytes()).hexdigest())
        if self.config.mode == "enforce":
            which = ", ".join(map(str, rejected.tolist()))
            await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "reject", request_id,
                               f"rejected by the backdoor firewall (input {which} of a batch of {len(x)})")
        return "reject"

    # -- lifecycle ---------------------------------------------------------------
    def _handlers(self) -> grpc.GenericRpcHandler:
        methods = {m: grpc.unary_unary_rpc_method_handler(self._passthrough(m), request_deserializer=_identity,
                                                          response_serializer=_identity) for m in PASSTHROUGH}
        methods["ModelInfer"] = grpc.unary_unary_rpc_method_handler(
            self.model_infer, request_deserializer=_identity, response_serializer=_identity)
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    async def start(self) -> int:
        """Start serving; returns the bound port."""
        self.warm_up()
        self.channel = grpc.aio.insecure_channel(self.config.upstream, options=_CHANNEL_OPTIONS)
        self.upstream_calls = {m: self.channel.unary_unary(f"/{SERVICE}/{m}") for m in (*PASSTHROUGH, "ModelInfer")}
        self.batcher = MicroBatcher(self._first_stage, self.config.max_batch_size, self.config.max_wait_us, self._on_batch)
        self.batcher.start()
        self.server = grpc.aio.server(options=_CHANNEL_OPTIONS)
        self.server.add_generic_rpc_handlers([self._handlers()])
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        port = self.server.add_insecure_port(self.config.listen)
        if port == 0:
            raise OSError(f"cannot listen on {self.config.listen}")
        self.metrics.serve(self.config.metrics_port)
        await self.server.start()
        for service in ("", SERVICE):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        return port

    async def stop(self) -> None:
        """Drain: stop taking requests, finish the ones in flight, then close."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.config.drain_seconds)
        await self.batcher.stop()
        self.later_executor.shutdown(wait=True)
        await self.channel.close()
        self.audit.close()


async def serve(config: ServeConfig, ready: asyncio.Event | None = None) -> None:
    import signal

    firewall = Firewall(config)
    port = await firewall.start()
    print(f"firewall: protecting '{firewall.model}' on port {port} -> {config.upstream} "
          f"(mode {config.mode}, on-error {config.on_error}, onnxruntime {firewall.engine.models.providers[0]}, "
          f"{firewall.thresholds.precision} first stage, "
          f"metrics :{config.metrics_port}/metrics)", flush=True)
    print(f"firewall: cascade: {firewall.fusion.describe_band()}", flush=True)
    capture = firewall.engine.models.describe_capture()
    if capture is not None:
        print(f"firewall: CUDA graphs: {capture}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("firewall: draining", flush=True)
    await firewall.stop()
