"""Opening a bus that may be down: processes outlive the bus.

``open_when_up(url, options)`` tries :func:`~vlabus.bus.transport.open_transport` until the hub or
broker answers, sleeping a jittered, growing delay (:class:`~vlabus.bus.backoff.Backoff`, capped
at 2 s so a fleet is back within seconds of its bus) between attempts, and logs what it waits for:
one line at the first failure, then one every ``log_every_s``. ``timeout_s`` bounds the wait for
scripts (``--connect-timeout``; default: forever) and ends in :class:`BusUnavailable`. A broker
that refuses the credentials (:class:`ConnectRefused`, e.g. 0x87 Not authorized) is not waited
for: retrying cannot fix a configuration.

Once connected, the adapters reconnect by themselves; :func:`watch_connection` logs when the
bus goes away and when it is back, so an operator sees what a process waits for at any time.
This layer sits above the adapters and works the same for every bus.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from schemas.errors import BusUnavailable, ConnectRefused, TransportError
from vlabus.bus.backoff import Backoff
from vlabus.bus.transport import Transport, TransportOptions, open_transport

log = logging.getLogger(__name__)

Opener = Callable[[str, TransportOptions], Awaitable[Transport]]
#: One attempt waits this long for the hub's WELCOME / the broker's CONNACK at most.
ATTEMPT_S = 5.0


def start_hint(url: str) -> str:
    """What to start so that ``url`` answers."""
    scheme = urlsplit(url).scheme
    if scheme == "zmq":
        return f"is `vlabus hub --bind tcp://{urlsplit(url).netloc}` running?"
    if scheme in ("mqtt", "mqtts"):
        return "is the broker running (`vlabus broker run --config DIR`, or Mosquitto)?"
    return "check --bus"


def describe(exc: BaseException, attempt_s: float) -> str:
    """A reason a person can act on, never an empty string."""
    cause = exc.__cause__
    if isinstance(exc, TimeoutError) or isinstance(cause, TimeoutError):
        return f"no answer within {attempt_s:g} s"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    text = str(exc).strip()
    return text.rstrip(":").strip() or type(exc).__name__


async def open_when_up(url: str, options: TransportOptions, *, timeout_s: float | None = None,
                       what: str = "the bus", backoff: Backoff | None = None,
                       opener: Opener = open_transport, log_every_s: float = 30.0,
                       clock: Callable[[], float] = time.monotonic) -> Transport:
    """Open ``url``, waiting for it while it is down (see the module docstring).

    Raises :class:`ConnectRefused` at once for a refusal retrying cannot fix, and
    :class:`BusUnavailable` when ``timeout_s`` passes without an answer.
    """
    backoff = backoff or Backoff(0.2, 2.0)
    started = clock()
    logged_at: float | None = None
    while True:
        waited = clock() - started
        attempt_s = ATTEMPT_S if timeout_s is None else max(0.1, min(ATTEMPT_S,
                                                                     timeout_s - waited))
        extra = {**options.extra, "connect_timeout_s": str(attempt_s)}
        try:
            transport = await opener(url, dataclasses.replace(options, extra=extra))
        except ConnectRefused as exc:
            if not exc.retryable:
                raise
            reason = str(exc)
        except (TransportError, OSError) as exc:
            reason = describe(exc, attempt_s)
        else:
            if logged_at is not None:
                log.warning("%s: connected to %s after waiting %.1f s", what, url,
                            clock() - started)
            return transport
        waited = clock() - started
        if timeout_s is not None and waited >= timeout_s:
            raise BusUnavailable(url, waited, f"{reason}; {start_hint(url)}")
        delay = backoff.next_delay()
        if timeout_s is not None:
            delay = min(delay, timeout_s - waited)
        now = clock()
        if logged_at is None or now - logged_at >= log_every_s:
            logged_at = now
            log.warning("%s: waiting for %s (%s; %s); next try in %.1f s, waited %.0f s so far",
                        what, url, reason, start_hint(url), delay, waited)
        await asyncio.sleep(delay)


async def watch_connection(transport: Transport, what: str, *, poll_s: float = 0.5,
                           clock: Callable[[], float] = time.monotonic) -> None:
    """Log each loss of ``transport``'s connection and its return, until cancelled. The
    adapter reconnects by itself; this only says what the process is waiting for."""
    up = transport.connected
    lost_at = 0.0
    while True:
        await asyncio.sleep(poll_s)
        now_up = transport.connected
        if up and not now_up:
            lost_at = clock()
            log.warning("%s: lost %s; waiting for it to come back (%s)", what, transport.url,
                        start_hint(transport.url))
        elif now_up and not up:
            log.warning("%s: %s is back after %.1f s", what, transport.url, clock() - lost_at)
        up = now_up
