"""A bare gRPC pass-through proxy, the serving benchmark's floor.

It forwards the six OIP v2 calls as bytes on the same grpc.aio stack as the firewall,
and does nothing else: no decoding, no scoring, no metrics. What it costs is what any
Python gRPC hop costs on the machine, which bounds what the firewall can reach.
Benchmark use only: it protects nothing.

usage: python -m offline.passthrough_proxy UPSTREAM_HOST:PORT LISTEN_HOST:PORT
"""

from __future__ import annotations

import asyncio
import sys

import grpc

SERVICE = "inference.GRPCInferenceService"
METHODS = ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")


def _identity(data: bytes) -> bytes:
    return data


async def serve(upstream: str, listen: str) -> None:
    channel = grpc.aio.insecure_channel(upstream)

    def handler(method: str) -> grpc.RpcMethodHandler:
        call = channel.unary_unary(f"/{SERVICE}/{method}")

        async def forward(raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await call(raw)

        return grpc.unary_unary_rpc_method_handler(forward, request_deserializer=_identity,
                                                   response_serializer=_identity)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {m: handler(m) for m in METHODS})])
    server.add_insecure_port(listen)
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], sys.argv[2]))
