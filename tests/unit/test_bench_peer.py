"""The openpi-style peer that bench.roundtrip compares against carries what it claims: the
observation's arrays and the 50×14 chunk survive its MessagePack packing, over a real
websocket server in its own process. (Its speed is measured in bench/, never here.)"""

from __future__ import annotations

import multiprocessing
from contextlib import ExitStack

import numpy as np
import pytest

from bench import websocket_peer  # imports websockets only when serving or connecting

pytest.importorskip("websockets")


def test_arrays_survive_the_packing() -> None:
    image = np.arange(224 * 224 * 3, dtype=np.uint8).reshape(224, 224, 3)
    state = np.linspace(-1, 1, 14, dtype=np.float32)
    obs = websocket_peer.unpackb(websocket_peer.packb(
        {"images": {"top": image}, "state": state, "prompt": "pick"}))
    assert obs["prompt"] == "pick"
    assert obs["state"].dtype == np.float32
    np.testing.assert_array_equal(obs["state"], state)
    np.testing.assert_array_equal(obs["images"]["top"], image)


def test_a_round_trip_through_the_server_returns_the_chunk() -> None:
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    server = ctx.Process(target=websocket_peer.serve, args=(ready,), daemon=True)
    server.start()
    try:
        port = ready.get(timeout=30)
        cams = {"top": np.zeros((224, 224, 3), np.uint8), "wrist": np.ones((224, 224, 3),
                                                                           np.uint8)}
        with ExitStack() as stack:
            call = websocket_peer.client(stack, port, cams, np.zeros(14, np.float32))
            for _ in range(3):
                call(b"")  # asserts the (50, 14) shape of every answer
    finally:
        server.terminate()
        server.join(5)
