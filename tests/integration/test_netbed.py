"""The two-namespace testbed itself: isolation, the shaped uplink, a cut link, cleanup."""

from __future__ import annotations

import socket
import subprocess
import threading
import time

import pytest

from tests.support.netbed import CLOUD_IP, NetBed, NetBedError, open_netbed, unavailable

pytestmark = pytest.mark.integration


def _sink(bed: NetBed) -> tuple[socket.socket, int]:
    """A listening socket in the cloud namespace."""
    def listen() -> socket.socket:
        server = socket.socket()
        server.bind((CLOUD_IP, 0))
        server.listen()
        return server
    server = bed.run("cloud", listen)
    return server, server.getsockname()[1]


def _drain(server: socket.socket, received: list[int]) -> None:
    conn, _ = server.accept()
    with conn:
        while chunk := conn.recv(1 << 16):
            received.append(len(chunk))


def test_site_reaches_cloud_only_over_the_link(netbed: NetBed) -> None:
    server, port = _sink(netbed)
    with server:
        # the host's own namespace has no route to the cloud address
        with pytest.raises(OSError, match=r"refused|unreachable|timed out"):
            socket.create_connection((CLOUD_IP, port), timeout=0.5).close()
        received: list[int] = []
        drain = threading.Thread(target=_drain, args=(server, received))
        drain.start()
        with netbed.inside("site"), socket.create_connection((CLOUD_IP, port), timeout=5) as c:
            c.sendall(b"x" * 1000)
        drain.join(10)
    assert sum(received) == 1000


def test_shaped_uplink_is_no_faster_than_its_rate(netbed: NetBed) -> None:
    netbed.shape(8.0)
    before = netbed.uplink_bytes()
    server, port = _sink(netbed)
    payload = b"y" * 1_000_000  # 8 Mbit: at least ~1 s at 8 Mbit/s (less the first burst)
    with server:
        received: list[int] = []
        drain = threading.Thread(target=_drain, args=(server, received))
        drain.start()
        with netbed.inside("site"):
            started = time.monotonic()
            with socket.create_connection((CLOUD_IP, port), timeout=10) as conn:
                conn.sendall(payload)
        drain.join(30)
        elapsed = time.monotonic() - started
    assert sum(received) == len(payload)
    assert elapsed >= 0.8  # a load can only make it slower
    assert netbed.uplink_bytes() - before >= len(payload)


def test_a_cut_link_carries_nothing_until_restored(netbed: NetBed) -> None:
    server, port = _sink(netbed)
    with server:
        netbed.cut()
        with netbed.inside("site"), pytest.raises(OSError, match="unreachable"):
            socket.create_connection((CLOUD_IP, port), timeout=0.5)
        netbed.restore()
        with netbed.inside("site"):
            socket.create_connection((CLOUD_IP, port), timeout=5).close()


def test_namespaces_are_deleted_on_close() -> None:
    reason = unavailable()
    if reason is not None:
        pytest.skip(reason)
    bed = open_netbed(uplink_mbit=20)
    names = (bed.site, bed.cloud)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=True).stdout
    assert all(name in listed for name in names)
    bed.close()
    bed.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=True).stdout
    assert not any(name in listed for name in names)
    with pytest.raises(ValueError, match="site"):
        bed.namespace("edge")
    with pytest.raises(NetBedError):  # entering a deleted namespace fails cleanly
        bed.run("site", lambda: None)
