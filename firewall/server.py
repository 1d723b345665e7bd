"""The sidecar: an Open Inference Protocol v2 gRPC proxy that scores before it forwards.

ModelInfer is decoded, validated, scored by the micro-batcher and then rejected or
forwarded. Requests travel to the upstream as the client's own bytes and responses
come back as the upstream's own bytes: nothing the firewall does can alter an
accepted answer. The other five RPCs pass straight through.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from firewall.artifacts import THRESHOLDS, load_artifacts
from firewall.audit import AuditLog
from firewall.batcher import MicroBatcher
from firewall.config import ServeConfig
from firewall.metrics import FirewallMetrics
from firewall.protocol import grpc_predict_v2_pb2 as pb
from firewall.scoring import FIREWALL, SERVING_RULES, ScoringEngine
from firewall.tensors import InvalidInput, decode_input
from firewall.thresholds import Thresholds

SERVICE = "inference.GRPCInferenceService"
PASSTHROUGH = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata")
MAX_MESSAGE = 256 * 1024 * 1024
_HOP_BY_HOP = ("content-type", "user-agent", "te", "grpc-", ":")
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", MAX_MESSAGE), ("grpc.max_receive_message_length", MAX_MESSAGE)]


def _identity(data: bytes) -> bytes:
    return data


class Firewall:
    def __init__(self, config: ServeConfig):
        self.config = config
        artifacts = load_artifacts(config.artifacts)
        self.manifest = artifacts.manifest
        self.thresholds = Thresholds.load(artifacts.path(THRESHOLDS))
        self.engine = ScoringEngine(artifacts, rules=SERVING_RULES, threads=config.threads)
        self.thresholds.require(self.engine.rule_names)
        self.model = self.manifest.name
        self.metrics = FirewallMetrics()
        self.metrics.artifacts_info.labels(self.model, artifacts.manifest_sha256).set(1)
        self.audit = AuditLog(config.audit_log)
        self.health = health.aio.HealthServicer()
        self.batcher: MicroBatcher | None = None
        self.channel: grpc.aio.Channel | None = None
        self.server: grpc.aio.Server | None = None

    # -- scoring -----------------------------------------------------------------
    def _score(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.engine.score(x)[1]

    def _on_batch(self, size: int, seconds: float) -> None:
        self.metrics.batch_size.labels(self.model).observe(size)
        self.metrics.scoring_duration.labels(self.model).observe(seconds)

    def _record(self, scores: dict[str, np.ndarray]) -> None:
        for rule, values in scores.items():
            histogram = self.metrics.score.labels(self.model, rule)
            for value in values:
                histogram.observe(float(value))
            over = int(self.thresholds.rejects(rule, values).sum())
            if over:
                self.metrics.rejections.labels(self.model, rule).inc(over)

    # -- forwarding --------------------------------------------------------------
    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        remaining = context.time_remaining()
        return self.config.upstream_timeout_s if remaining is None else min(remaining, self.config.upstream_timeout_s)

    async def _forward(self, method: str, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        metadata = tuple((k, v) for k, v in context.invocation_metadata() or () if not k.startswith(_HOP_BY_HOP))
        call = self.channel.unary_unary(f"/{SERVICE}/{method}")
        try:
            return await call(raw, timeout=self._timeout(context), metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            self.metrics.upstream_errors.labels(self.model, exc.code().name).inc()
            await context.abort(exc.code(), f"upstream: {exc.details()}")

    def _passthrough(self, method: str):
        async def handler(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await self._forward(method, raw, context)

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

        verdict = "accept"
        try:
            scores = await self.batcher.score(x)
        except Exception as exc:  # fail closed unless told otherwise
            self.audit.write(request_id=request_id, model=self.model, verdict="error", error=repr(exc),
                             input_sha256=hashlib.sha256(raw).hexdigest())
            if self.config.on_error == "reject":
                await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "error", request_id,
                                   "rejected by the backdoor firewall: the input could not be scored")
            verdict = "error"
        else:
            self._record(scores)
            rejected = np.flatnonzero(self.thresholds.rejects(FIREWALL, scores[FIREWALL]))
            if rejected.size:
                verdict = "reject"
                self.audit.write(
                    request_id=request_id, client_request_id=request.id, model=self.model, mode=self.config.mode,
                    verdict="reject", rejected_inputs=rejected.tolist(),
                    scores={rule: [float(v) for v in values] for rule, values in scores.items()},
                    thresholds={rule: self.thresholds.rules[rule].threshold for rule in scores},
                    input_sha256=hashlib.sha256(request.raw_input_contents[0] if request.raw_input_contents
                                                else x.tobytes()).hexdigest())
                if self.config.mode == "enforce":
                    which = ", ".join(map(str, rejected.tolist()))
                    await self._refuse(context, grpc.StatusCode.PERMISSION_DENIED, "reject", request_id,
                                       f"rejected by the backdoor firewall (input {which} of a batch of {len(x)})")
        started = time.perf_counter()
        response = await self._forward("ModelInfer", raw, context)
        self.metrics.upstream_duration.labels(self.model).observe(time.perf_counter() - started)
        self.metrics.requests.labels(self.model, verdict).inc()
        return response

    # -- lifecycle ---------------------------------------------------------------
    def _handlers(self) -> grpc.GenericRpcHandler:
        methods = {m: grpc.unary_unary_rpc_method_handler(self._passthrough(m), request_deserializer=_identity,
                                                          response_serializer=_identity) for m in PASSTHROUGH}
        methods["ModelInfer"] = grpc.unary_unary_rpc_method_handler(
            self.model_infer, request_deserializer=_identity, response_serializer=_identity)
        return grpc.method_handlers_generic_handler(SERVICE, methods)

    async def start(self) -> int:
        """Start serving; returns the bound port."""
        self.channel = grpc.aio.insecure_channel(self.config.upstream, options=_CHANNEL_OPTIONS)
        self.batcher = MicroBatcher(self._score, self.config.max_batch_size, self.config.max_wait_us, self._on_batch)
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
        await self.channel.close()
        self.audit.close()


async def serve(config: ServeConfig, ready: asyncio.Event | None = None) -> None:
    import signal

    firewall = Firewall(config)
    port = await firewall.start()
    print(f"firewall: protecting '{firewall.model}' on port {port} -> {config.upstream} "
          f"(mode {config.mode}, on-error {config.on_error}, onnxruntime {firewall.engine.models.providers[0]}, "
          f"metrics :{config.metrics_port}/metrics)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    print("firewall: draining", flush=True)
    await firewall.stop()
