"""An openpi-style policy server and client, for ``bench.roundtrip``'s ``ws_msgpack_peer``.

It reproduces the path of openpi's remote inference, as published: a ``websockets`` asyncio
server (no compression, no size limit) that unpacks each observation with MessagePack and
NumPy arrays as ``{"__ndarray__": True, "data", "dtype", "shape"}`` maps, calls the policy and
sends its packed answer back; a blocking ``websockets.sync`` client. No signature, no
compression, no queue, one server per robot. This is not openpi's code and does not load its
models: it carries the same observation and action as the vlabus loop (two 224×224×3 cameras,
a 14-float state, a task string; a 50×14 float32 chunk) over the same kind of connection, so
the two can be compared in one run on one machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import msgpack
import numpy as np

HORIZON, ACTION_DIM = 50, 14


def _pack(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str,
                b"shape": obj.shape}
    return obj


def _unpack(obj: dict[Any, Any]) -> Any:
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]),
                          shape=obj[b"shape"])
    return obj


def packb(obj: Any) -> bytes:
    return msgpack.packb(obj, default=_pack)  # type: ignore[no-any-return]


def unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, object_hook=_unpack)


def serve(ready: Any, metadata: dict[str, Any] | None = None) -> None:
    """Run the server in this process; puts its port on ``ready``. With ``metadata`` it first
    sends that map on each new connection, as openpi's server does (``openpi_client`` waits for
    it); ``bench.roundtrip``'s client does not read it, so it is off by default."""
    import websockets.asyncio.server

    def infer(obs: dict[str, Any]) -> dict[str, Any]:  # the no-op policy, as in vlabus's loop
        del obs
        return {"actions": np.zeros((HORIZON, ACTION_DIM), np.float32)}

    async def handler(websocket: Any) -> None:
        if metadata is not None:
            await websocket.send(packb(metadata))
        async for message in websocket:
            obs = unpackb(message)
            start = time.monotonic()
            action = infer(obs)
            action["server_timing"] = {"infer_ms": (time.monotonic() - start) * 1000}
            await websocket.send(packb(action))

    async def main() -> None:
        async with websockets.asyncio.server.serve(handler, "127.0.0.1", 0, compression=None,
                                                   max_size=None) as server:
            ready.put(server.sockets[0].getsockname()[1])
            await asyncio.Future()

    asyncio.run(main())


def client(stack: ExitStack, port: int, cams: dict[str, np.ndarray],
           state: np.ndarray) -> Callable[[bytes], None]:
    """A blocking client, connected until ``stack`` closes; each call packs the observation,
    sends it and unpacks the answer."""
    import websockets.sync.client

    ws = stack.enter_context(websockets.sync.client.connect(
        f"ws://127.0.0.1:{port}", compression=None, max_size=None))

    def round_trip(_payload: bytes) -> None:
        obs = {"images": cams, "state": state, "prompt": "pick up the red cube"}
        ws.send(packb(obs))
        answer = unpackb(ws.recv())  # type: ignore[arg-type]
        assert answer["actions"].shape == (HORIZON, ACTION_DIM)

    return round_trip
