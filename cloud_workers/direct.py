"""``vlabus worker --direct``: the worker's direct socket and the status that advertises it.

:func:`open_direct` binds the ROUTER (:mod:`vlabus.direct.server`) before the worker connects
to its bus, so the birth status already names the endpoint (``config.detail``), and returns
the opener that lays the direct socket over the bus transport. :func:`advertise` repeats the
online status with the queue depth while the worker serves, so robots choose by load; a
stalled worker's degraded status is left standing (robots stop choosing it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from cloud_workers.config import worker_status
from cloud_workers.worker import Worker
from schemas import topics
from schemas.errors import BusError
from schemas.status import DIRECT, DIRECT_CURVE
from vlabus.bus.transport import Transport, TransportOptions
from vlabus.bus.wait import Opener
from vlabus.direct.server import DirectServer, bind_router, bound_endpoint

log = logging.getLogger(__name__)


@dataclass
class DirectPlane:
    """A bound direct socket waiting for its bus transport (see :meth:`opener`)."""

    sock: zmq.Socket[Any]
    endpoint: str
    curve_public: str
    server: DirectServer | None = None

    def detail(self) -> dict[str, str]:
        """The status ``detail`` keys that advertise this socket."""
        out = {DIRECT: self.endpoint}
        if self.curve_public:
            out[DIRECT_CURVE] = self.curve_public
        return out

    def opener(self, inner: Opener) -> Callable[[str, TransportOptions], Any]:
        """``inner`` with the direct socket laid over the transport it opens."""
        async def open_with_direct(url: str, options: TransportOptions) -> Transport:
            self.server = DirectServer(await inner(url, options), self.sock)
            return self.server
        return open_with_direct

    def attach(self, worker: Worker) -> None:
        """Report ``worker``'s queue depth with each direct reply."""
        if self.server is not None:
            self.server.depth = lambda: len(worker.queue)

    def close(self) -> None:
        if self.server is None:
            self.sock.close(0)


def open_direct(bind: str, advertise: str | None = None, *, curve: bool = False) -> DirectPlane:
    """Bind ``bind`` (``tcp://HOST:PORT``; port 0: any free one). Robots are told
    ``advertise`` (default: the bound endpoint, which must then name a reachable host).
    ``curve``: encrypt with CurveZMQ under a key pair made now and advertised in the signed
    status. Raises ``ValueError`` for an unusable endpoint."""
    if not bind.startswith("tcp://"):
        raise ValueError(f"--direct {bind!r}: expected tcp://HOST:PORT")
    public, secret = zmq.curve_keypair() if curve else (b"", b"")
    try:
        sock = bind_router(bind, curve_secret=secret or None)
    except zmq.ZMQError as exc:
        raise ValueError(f"--direct {bind!r}: {exc}") from exc
    bound = bound_endpoint(sock)
    host = bound.removeprefix("tcp://").rpartition(":")[0]
    if advertise is None and host in ("0.0.0.0", "*", "[::]", "::"):
        sock.close(0)
        raise ValueError(f"--direct {bind!r} binds every interface: name the address robots "
                         "connect to with --direct-advertise tcp://HOST:PORT")
    if advertise is not None and advertise[-2:] == ":0":
        advertise = advertise[:-1] + bound.rpartition(":")[2]
    return DirectPlane(sock, advertise or bound, public.decode())


async def advertise(worker: Worker, every_s: float) -> None:
    """Repeat ``worker``'s online status with its queue depth every ``every_s`` seconds."""
    await worker.ready.wait()
    topic = topics.worker_status_topic(worker.config.worker_id)
    while True:
        await asyncio.sleep(every_s)
        if not worker.ready.is_set() or worker.stall.stalled:
            continue  # stopping, or out of the pool: its own status stands
        status = worker_status(worker.config, "online", worker.session, worker.runner.models,
                               queue_depth=len(worker.queue))
        try:
            await worker.transport.publish(topic, worker.encoder.encode(status), qos=1,
                                           retain=True)
        except BusError as exc:
            log.warning("status with queue depth not published: %r", exc)
