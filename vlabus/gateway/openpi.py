"""openpi's WebSocket policy protocol in front of a vlabus worker pool.

What an ``openpi_client.websocket_client_policy.WebsocketClientPolicy`` sees, as with openpi's
own ``WebsocketPolicyServer``: on connect one binary message with the server metadata
(MessagePack map); then for each binary observation (MessagePack with NumPy arrays) one binary
answer ``{"actions": float32 HxD, "server_timing": {"infer_ms"}, "vlabus": {...}}``; a
``GET /healthz`` answers ``OK``.

Where openpi's server would raise, the gateway answers with a **text** message instead and keeps
the connection open: ``openpi_client`` raises ``RuntimeError("Error in inference server:\\n…")``
for a text answer, and the next ``infer`` on the same client works. That covers a bad
observation (the text names the key) and a late cloud (no verified action by the deadline) —
unless a local fallback policy is configured, which then answers with ``vlabus.source`` =
``fallback``.
"""

from __future__ import annotations

import asyncio
import http
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas.errors import SchemaError
from vlabus.gateway.mapping import KeyMap, MappingError, observation_of
from vlabus.gateway.npwire import NpWireError, packb, unpackb
from vlabus.gateway.remote import CloudLateError, RemotePolicy
from vlabus.policy import Observation, Policy
from vlabus.quantiles import quantiles

log = logging.getLogger(__name__)

LATE_PREFIX = "vlabus gateway: cloud late:"
BAD_PREFIX = "vlabus gateway: bad observation:"


@dataclass
class GatewayStats:
    connections: int = 0
    requests: int = 0
    cloud: int = 0
    fallback: int = 0
    late_errors: int = 0
    bad_observations: int = 0
    rtt_ms: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        found = quantiles(self.rtt_ms[-10_000:], (0.5, 0.99)) if self.rtt_ms else {}
        return {"connections": self.connections, "requests": self.requests,
                "cloud": self.cloud, "fallback": self.fallback,
                "late_errors": self.late_errors, "bad_observations": self.bad_observations,
                "rtt_ms": {"p50": found.get("p50"), "p99": found.get("p99")}}


class OpenpiGateway:
    """Serves one robot identity's requests; see the module docstring."""

    def __init__(self, remote: RemotePolicy, keymap: KeyMap, *, fallback: Policy | None = None,
                 default_command: str = "", metadata: dict[str, Any] | None = None) -> None:
        self.remote = remote
        self.keymap = keymap
        self.fallback = fallback
        self.default_command = default_command
        self.stats = GatewayStats()
        self.metadata = {
            "server": "vlabus gateway openpi", "robot_id": remote.config.robot_id,
            "deadline_ms": remote.config.deadline_s * 1e3, "map": keymap.describe(),
            "late": "fallback" if fallback is not None else "error", **(metadata or {})}
        self._lock = asyncio.Lock()  # the fallback policy runs one batch at a time

    async def handler(self, websocket: Any) -> None:
        """One client connection: metadata first, then observation -> answer until it closes."""
        self.stats.connections += 1
        await websocket.send(packb(self.metadata))
        async for message in websocket:
            try:
                answer = await self.answer(message)
            except Exception as exc:  # a bug must cost one request, not the robot's connection
                log.exception("openpi request failed")
                answer = f"vlabus gateway: internal error: {exc!r}"
            await websocket.send(answer)

    async def answer(self, message: bytes | str) -> bytes | str:
        """The reply to one client message: packed actions, or an error text."""
        started = time.perf_counter_ns()
        self.stats.requests += 1
        if isinstance(message, str):
            self.stats.bad_observations += 1
            return f"{BAD_PREFIX} observations are binary MessagePack, got a text message"
        try:
            observation = observation_of(unpackb(message), self.keymap, self.default_command)
        except (NpWireError, MappingError) as exc:
            self.stats.bad_observations += 1
            return f"{BAD_PREFIX} {exc}"
        try:
            reply = await self.remote.infer(observation)
        except SchemaError as exc:  # e.g. an image the wire cannot carry
            self.stats.bad_observations += 1
            return f"{BAD_PREFIX} {exc}"
        except CloudLateError as exc:
            if self.fallback is None:
                self.stats.late_errors += 1
                self.remote.note({"step": self.stats.requests - 1, "source": "fallback",
                                  "cause": exc.cause, "lateness_ns": 0, "rtt_ns": None,
                                  "worker_id": None, "model_version": 0, "action": None})
                return f"{LATE_PREFIX} {exc}; this request got no action, the next may"
            return await self._fallback(observation, started, exc.cause)
        self.stats.cloud += 1
        rtt_ms = reply.rtt_ns / 1e6
        self.stats.rtt_ms.append(rtt_ms)
        self.remote.note({"step": self.stats.requests - 1, "source": "cloud", "cause": None,
                          "lateness_ns": 0, "rtt_ns": reply.rtt_ns, "worker_id": reply.worker_id,
                          "model_version": reply.model_version,
                          "action": reply.chunk[0].tolist()})
        return packb({
            "actions": reply.chunk,
            "server_timing": {"infer_ms": (time.perf_counter_ns() - started) / 1e6},
            "vlabus": {"source": "cloud", "worker_id": reply.worker_id, "model": reply.model,
                       "model_version": reply.model_version, "round_trip_ms": rtt_ms,
                       "queue_wait_ms": reply.queue_wait_ns / 1e6,
                       "inference_ms": reply.inference_ns / 1e6}})

    async def _fallback(self, observation: Observation, started: int,
                        cause: str) -> bytes | str:
        assert self.fallback is not None
        policy = self.fallback
        async with self._lock:
            try:
                batch: Sequence[Observation] = [observation]
                out = await asyncio.to_thread(policy.infer, batch)
            except ValueError as exc:  # PolicyInputError: the local policy does not fit
                self.stats.late_errors += 1
                return f"{LATE_PREFIX} and the local fallback refused the observation: {exc}"
        chunk = np.asarray(out, dtype=np.float32)[0]
        self.stats.fallback += 1
        self.remote.note({"step": self.stats.requests - 1, "source": "fallback",
                          "cause": cause, "lateness_ns": 0, "rtt_ns": None,
                          "worker_id": None, "model_version": 0,
                          "action": chunk.reshape(chunk.shape[0], -1)[0].tolist()})
        return packb({
            "actions": chunk,
            "server_timing": {"infer_ms": (time.perf_counter_ns() - started) / 1e6},
            "vlabus": {"source": "fallback", "cause": cause}})


def health_check(connection: Any, request: Any) -> Any:
    """``GET /healthz`` -> 200 OK (as openpi's server); other paths go on to the WebSocket."""
    if request.path == "/healthz":
        return connection.respond(http.HTTPStatus.OK, "OK\n")
    return None


async def serve(gateway: OpenpiGateway, host: str, port: int, *,
                max_message: int = 64 << 20) -> Any:
    """Start the WebSocket server (``websockets``, as openpi); returns it, already listening."""
    from websockets.asyncio.server import serve as ws_serve

    return await ws_serve(gateway.handler, host, port, compression=None, max_size=max_message,
                          process_request=health_check)
