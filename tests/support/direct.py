"""The direct data plane in tests: real ``vlabus worker --direct`` processes and a robot end."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import IO, Any

from schemas import topics
from security.keys import Keyring, add_pool_key, load_pool_key
from tests.support.aio import TIMEOUT, eventually
from tests.support.keys import KeyDir
from tests.support.wire import frame
from vlabus.bus.transport import TransportOptions, open_transport
from vlabus.direct.robot import DirectTransport
from vlabus.envelope import Received
from vlabus.session_link import RobotLink

ROBOT = "robot-a"


def pool_keys(keydir: KeyDir, tmp: Path) -> Path:
    """A copy of the test keyring with pool ``gpu``'s X25519 key (the session exchange)."""
    keys = tmp / "keys"
    shutil.copytree(keydir.path, keys)
    add_pool_key(keys, "gpu")
    return keys


@contextmanager
def direct_worker(url: str, keys: Path, worker_id: str, *extra: str,
                  direct: bool = True) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``vlabus worker`` process of group ``pool`` (session pool ``gpu``, a no-op
    policy), with a direct socket on a free port unless ``direct`` is False; terminated (its
    JSON summary then on stdout) or killed on exit."""
    args = [sys.executable, "-m", "vlabus", "worker", "--bus", url, "--keys", str(keys),
            "--id", worker_id, "--group", "pool", "--policy", "noop", "--session-pool", "gpu",
            "--max-delay-ms", "0", "--direct-status-s", "0.2", "--json", *extra]
    if direct:
        args += ["--direct", "tcp://127.0.0.1:0"]
    log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed below
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()


def summary_of(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """The JSON summary a stopped worker printed."""
    import json

    assert proc.stdout is not None
    return dict(json.loads(proc.stdout.read().decode()))


class DirectRobot:
    """Robot ``robot-a`` on a bus with a direct data plane and session integrity."""

    def __init__(self, bus: DirectTransport, link: RobotLink) -> None:
        self.bus = bus
        self.link = link

    async def wait_for(self, *workers: str) -> None:
        """Until every one of ``workers`` advertises a direct endpoint here."""
        await eventually(lambda: set(workers) <= set(self.bus.directory.usable()), 30)

    async def step(self, n: int, timeout: float = TIMEOUT) -> Received:
        """Send frame ``n`` (MACed under the session) and return its verified reply."""
        await self.link.send(topics.frame_topic(ROBOT), frame(n), corr=f"c{n}",
                             deadline_ns=time.time_ns() + int(timeout * 1e9))
        async with asyncio.timeout(timeout):
            while True:
                got = self.link.accept(await self.bus.receive())
                if got is not None and got.header.corr == f"c{n}":
                    return got


@asynccontextmanager
async def direct_robot(url: str, keys: Path,
                       options: TransportOptions | None = None) -> AsyncIterator[DirectRobot]:
    ring = Keyring.load(keys)
    inner = await open_transport(url, options or TransportOptions(client_id=ROBOT))
    bus = DirectTransport(inner, ROBOT, ring)
    try:
        await bus.start()
        await bus.subscribe(topics.action_topic(ROBOT), qos=1)
        from security.keys import load_signer

        link = RobotLink(bus, load_signer(keys, "robot", ROBOT), load_pool_key(keys, "gpu"),
                         ring)
        yield DirectRobot(bus, link)
    finally:
        await bus.close()
