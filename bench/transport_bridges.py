"""Three ways to drive one DEALER socket from asyncio, to choose vlabus.bus.zmq's design.

Each factory connects to ``endpoint`` and returns ``(send, recv, close)``.

* ``zmq_asyncio``: pyzmq's own ``zmq.asyncio`` sockets (a future per recv).
* ``add_reader``: a plain socket; ``loop.add_reader`` on its edge-triggered FD drains into a
  deque and wakes one waiter (what vlabus.bus.zmq does).
* ``io_thread``: a dedicated thread owns the socket, takes sends over an inproc PAIR and hands
  messages to the loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import zmq
import zmq.asyncio

Bridge = tuple[Callable[[bytes], Awaitable[None]], Callable[[], Awaitable[Any]], Callable[[], None]]


async def zmq_asyncio(endpoint: str) -> Bridge:
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)

    async def send(payload: bytes) -> None:
        await sock.send(payload)

    async def recv() -> Any:
        return await sock.recv(copy=False)

    def close() -> None:
        sock.close(0)
        ctx.term()

    return send, recv, close


async def add_reader(endpoint: str) -> Bridge:
    loop = asyncio.get_running_loop()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    items: deque[Any] = deque()
    waiter: list[asyncio.Future[None]] = []

    def drain() -> None:
        while True:
            try:
                items.append(sock.recv(zmq.NOBLOCK, copy=False))
            except zmq.Again:
                break
        if items and waiter and not waiter[0].done():
            waiter[0].set_result(None)

    loop.add_reader(sock.FD, drain)
    loop.call_soon(drain)

    async def send(payload: bytes) -> None:
        sock.send(payload, zmq.NOBLOCK)
        if int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            loop.call_soon(drain)

    async def recv() -> Any:
        while not items:
            waiter[:] = [loop.create_future()]
            await waiter[0]
        return items.popleft()

    def close() -> None:
        loop.remove_reader(sock.FD)
        sock.close(0)
        ctx.term()

    return send, recv, close


async def io_thread(endpoint: str) -> Bridge:
    loop = asyncio.get_running_loop()
    ctx = zmq.Context()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    pipe = ctx.socket(zmq.PAIR)
    pipe.bind("inproc://bridge")
    started = threading.Event()

    def run() -> None:
        sock = ctx.socket(zmq.DEALER)
        sock.connect(endpoint)
        other = ctx.socket(zmq.PAIR)
        other.connect("inproc://bridge")
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(other, zmq.POLLIN)
        started.set()
        while True:
            events = dict(poller.poll())
            if other in events:
                message = other.recv(copy=False)
                if message.bytes == b"":
                    break
                sock.send(message, copy=False)
            if sock in events:
                loop.call_soon_threadsafe(inbox.put_nowait, sock.recv(copy=False))
        sock.close(0)
        other.close(0)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(5)

    async def send(payload: bytes) -> None:
        pipe.send(payload)

    async def recv() -> Any:
        return await inbox.get()

    def close() -> None:
        pipe.send(b"")
        thread.join(5)
        pipe.close(0)
        ctx.term()

    return send, recv, close


BRIDGES: dict[str, Callable[[str], Awaitable[Bridge]]] = {
    "zmq_asyncio": zmq_asyncio, "add_reader": add_reader, "io_thread": io_thread}
