"""Everything that reaches the robot, routed by topic: actions to the
:class:`~edge_agent.inbox.ActionInbox`, model releases to the :class:`~edge_agent.feed.ModelFeed`.

The black box, when given, observes every message first. This is the only place the robot
consumes its transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from edge_agent.blackbox import BlackBox
from edge_agent.feed import ModelFeed
from edge_agent.inbox import ActionInbox
from vlabus.bus.transport import Message, Transport

log = logging.getLogger(__name__)


class Receiver:
    """Subscribes for the inbox and the feed and hands each message to the one it is for."""

    def __init__(self, transport: Transport, *, inbox: ActionInbox | None = None,
                 feed: ModelFeed | None = None, blackbox: BlackBox | None = None) -> None:
        self.transport = transport
        self.inbox = inbox
        self.feed = feed
        self.blackbox = blackbox
        #: other topics subscribed on this connection, each to its handler (federated rounds)
        self.routes: dict[str, Callable[[Message], None]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.inbox is not None:
            await self.transport.subscribe(self.inbox.topic, qos=1)
        if self.feed is not None:
            for topic in self.feed.topics:
                await self.transport.subscribe(topic, qos=1)
        name = "edge-recv" if self.inbox is None else f"edge-recv-{self.inbox.robot_id}"
        self._task = asyncio.create_task(self._run(), name=name)
        # Handled as they arrive, in the transport's receive callback: an action reaches the
        # waiting control step without first waking the task below (which takes what queued
        # before this was set, or while it had a backlog).
        self.transport.consume(self._take)

    async def _run(self) -> None:
        async for message in self.transport:
            self._take(message)

    def _take(self, message: Message) -> bool:
        try:
            self.handle(message)
        except Exception:  # the robot keeps acting whatever one message does
            log.exception("unexpected error handling a message on %r", message.topic)
        return True

    def handle(self, message: Message) -> None:
        """Route one received message; never raises for bad input."""
        if self.blackbox is not None:
            self.blackbox.received(message)
        inbox = self.inbox
        route = self.routes.get(message.topic)
        if route is not None:
            route(message)
        elif inbox is not None and message.topic == inbox.topic:
            inbox.handle(message)
        elif self.feed is not None:
            self.feed.handle(message)

    async def close(self) -> None:
        self.transport.consume(None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.feed is not None:
            await self.feed.close()
