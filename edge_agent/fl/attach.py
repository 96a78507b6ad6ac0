"""Join a running agent to federated rounds: its on-time cloud steps fill the experience buffer
and a :class:`~.client.RoundClient` answers rounds on a connection of its own (client id
``ROBOT-fl``), so round traffic never queues behind the control loop's messages."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from edge_agent.agent import EdgeAgent
from edge_agent.fl.buffer import ExperienceBuffer
from edge_agent.fl.client import ClientConfig, RoundClient
from security.keys import Keyring
from vlabus.bus.transport import TransportOptions, open_transport


@dataclass
class Federated:
    buffer: ExperienceBuffer
    client: RoundClient

    def summary(self) -> dict[str, object]:
        return {**self.client.stats.summary(), "buffer_pairs": len(self.buffer),
                "buffer_dropped_segments": self.buffer.dropped}


@asynccontextmanager
async def federated(agent: EdgeAgent, bus_url: str, options: TransportOptions,
                    keyring: Keyring, config: ClientConfig, *,
                    buffer_bytes: int = 256 << 20) -> AsyncIterator[Federated]:
    """Buffer ``agent``'s on-time cloud steps and answer rounds until the block ends."""
    buffer = ExperienceBuffer(config.buffer_dir, max_bytes=buffer_bytes)
    transport = await open_transport(bus_url, dataclasses.replace(
        options, client_id=f"{config.robot_id}-fl", will=None))
    client = RoundClient(transport, agent.encoder, keyring, config)
    agent.on_cloud = buffer.add
    try:
        await client.start()
        yield Federated(buffer, client)
    finally:
        agent.on_cloud = None
        await client.close()
        await transport.close()
        await asyncio.to_thread(buffer.close)
