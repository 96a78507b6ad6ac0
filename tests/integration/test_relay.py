"""The delaying relay of the test support: latency added, order kept, everything closed."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.relay import DelayRelay


@pytest.fixture
def echo() -> Iterator[int]:
    """A loopback echo server; its port."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        with server:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(1 << 16):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port
    server.close()
    thread.join(5)


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    out = b""
    while len(out) < size:
        chunk = conn.recv(size - len(out))
        if not chunk:
            break
        out += chunk
    return out


def test_each_direction_is_delayed(echo: int) -> None:
    relay = DelayRelay(("127.0.0.1", 0), ("127.0.0.1", echo), delay_s=0.05).start()
    try:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as conn:
            started = time.monotonic()
            conn.sendall(b"ping")
            assert _recv_exactly(conn, 4) == b"ping"
            elapsed = time.monotonic() - started
    finally:
        relay.close()
    assert elapsed >= 0.1  # 50 ms up and 50 ms back; a loaded machine only adds
    assert relay.chunks >= 2


def test_jitter_never_reorders(echo: int) -> None:
    relay = DelayRelay(("127.0.0.1", 0), ("127.0.0.1", echo), delay_s=0.005, jitter_s=0.02,
                       seed=3).start()
    payload = b"".join(i.to_bytes(4, "big") for i in range(2000))
    try:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as conn:
            for start in range(0, len(payload), 100):
                conn.sendall(payload[start:start + 100])
            assert _recv_exactly(conn, len(payload)) == payload
    finally:
        relay.close()
    relay.close()  # twice is fine
