"""Join a running agent to federated rounds: its on-time cloud steps fill the experience buffer
and a :class:`~.client.RoundClient` answers rounds over the agent's own connection (a fleet
broker admits one connection per robot identity; the agent's receiver routes the round topic
to the client)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from edge_agent.agent import EdgeAgent
from edge_agent.fl.buffer import ExperienceBuffer
from edge_agent.fl.client import ClientConfig, RoundClient
from security.keys import Keyring


@dataclass
class Federated:
    buffer: ExperienceBuffer
    client: RoundClient

    def summary(self) -> dict[str, object]:
        return {**self.client.stats.summary(), "buffer_pairs": len(self.buffer),
                "buffer_dropped_segments": self.buffer.dropped}


@asynccontextmanager
async def federated(agent: EdgeAgent, keyring: Keyring, config: ClientConfig, *,
                    buffer_bytes: int = 256 << 20, executor: Executor | None = None,
                    client_class: type[RoundClient] = RoundClient) -> AsyncIterator[Federated]:
    """Buffer ``agent``'s on-time cloud steps and answer rounds until the block ends
    (``executor`` runs the training; default: a trainer process of the client's own)."""
    buffer = ExperienceBuffer(config.buffer_dir, max_bytes=buffer_bytes)
    client = client_class(agent.transport, agent.encoder, keyring, config, executor=executor)
    agent.receiver.routes[client.topic] = client.handle
    agent.on_cloud = buffer.add
    try:
        await client.start(consume=False)
        yield Federated(buffer, client)
    finally:
        agent.on_cloud = None
        agent.receiver.routes.pop(client.topic, None)
        await client.close()
        await asyncio.to_thread(buffer.close)
