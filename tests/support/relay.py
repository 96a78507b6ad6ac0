"""A TCP relay that adds latency (and jitter), for links ``tc netem`` cannot shape here.

This kernel has no ``netem`` (docs FACTS), so a delay is added in user space: the relay
accepts connections on ``listen`` and opens one to ``target`` for each; every chunk read in
either direction is written out ``delay_s`` (plus up to ``jitter_s``, never reordering) after it
arrived. Run it inside a namespace (``with bed.inside("cloud"): relay.start()``) to put it on
the path between site and cloud.

It runs its own event loop on a thread, so tests and benchmarks of any kind can use it;
``close`` stops it and closes every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections.abc import Coroutine
from typing import Any


class DelayRelay:
    """``listen`` (host, port; port 0 picks one) → ``target``, each direction delayed."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], *, delay_s: float,
                 jitter_s: float = 0.0, seed: int = 0) -> None:
        self.listen = listen
        self.target = target
        self.delay_s = delay_s
        self.jitter_s = jitter_s
        self.port = listen[1]
        self._random = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-relay",
                                        daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.chunks = 0  # forwarded, both directions

    def start(self) -> DelayRelay:
        """Listen (in the calling thread's network namespace) and serve on the relay thread."""
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, *self.listen))
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _due(self, now: float, last: float) -> float:
        jitter = self._random.uniform(0.0, self.jitter_s) if self.jitter_s else 0.0
        return max(now + self.delay_s + jitter, last)  # never before the previous chunk

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        writer = asyncio.create_task(self._write(queue, sink))
        self._tasks.add(writer)
        writer.add_done_callback(self._tasks.discard)
        last = 0.0
        try:
            while chunk := await source.read(1 << 16):
                last = self._due(loop.time(), last)
                queue.put_nowait((last, chunk))
        except (ConnectionError, OSError):
            pass
        finally:
            queue.put_nowait((last, b""))  # end of stream, after what is in flight
            with contextlib.suppress(ConnectionError, OSError):
                await writer

    async def _write(self, queue: asyncio.Queue[tuple[float, bytes]],
                     sink: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                due, chunk = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)  # the delay this relay exists to add
                if not chunk:
                    return
                sink.write(chunk)
                self.chunks += 1
                await sink.drain()
        finally:
            sink.close()

    def close(self) -> None:
        """Stop listening, drop every connection and the loop."""
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        self._call(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
