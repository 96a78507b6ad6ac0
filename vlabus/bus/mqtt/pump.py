"""The paho socket pump: who reads and writes paho's socket, on which thread.

paho is driven through its external-loop API, not ``loop_start``, so a message crosses no
thread on the way in or out: the event loop reads the socket (``add_reader``) and puts messages
straight into the bounded inbox; writes happen on the thread that queued them, one at a time
(a publish from the loop goes straight to the socket). A small network thread of our own sends
PINGREQ on time, finishes writes the socket could not take at once, and takes over the reads
(handing them over with ``call_soon_threadsafe``, one wake-up per burst) while the loop has not
run for two ticks: a blocked event loop keeps its connection and acknowledges QoS 1 deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from vlabus.bus.inbox import Inbox
from vlabus.bus.transport import Message


class SocketPump:
    """Moves bytes between paho's socket and the loop; one per connection, reused across
    reconnects (:meth:`start` after each connect, :meth:`stop` after each loss)."""

    def __init__(self, client: paho.Client, loop: asyncio.AbstractEventLoop, inbox: Inbox,
                 *, tick_s: float, name: str) -> None:
        self._client = client
        self._loop = loop
        self._inbox = inbox
        self._name = name
        self._loop_thread = threading.get_ident()
        self._arrivals: deque[Message] = deque(maxlen=max(inbox.limit, 1))
        self._arrivals_lock = threading.Lock()
        self.arrivals_dropped = 0
        self._wake_pending = False
        # Writes happen on whichever thread queued the packet (the loop for publishes), one at
        # a time; the network thread only reads, keeps the connection alive and finishes
        # writes the socket could not take at once.
        self._write_lock = threading.Lock()
        self._wake_r: socket.socket | None = None  # wakes the network thread; one per thread
        self._wake_w: socket.socket | None = None
        self._network: threading.Thread | None = None
        self._network_stop = threading.Event()
        # Reads happen on the loop (add_reader) while it runs; the network thread takes over
        # while the loop has not beaten for a while. One reader at a time.
        self._read_lock = threading.Lock()
        self._tick = tick_s
        self._beat = time.monotonic()
        self._beater: asyncio.TimerHandle | None = None
        self._watched: tuple[Any, int] | None = None  # (paho's socket, our dup of its fd)

    # -- from paho's callbacks, on any thread ---------------------------------------------

    def post(self, func: Callable[..., None], *args: Any) -> None:
        """Run ``func(*args)`` on the loop, after the paho call in progress."""
        # RuntimeError: the loop closed under a late callback; nobody is waiting for it.
        with contextlib.suppress(RuntimeError):
            if threading.get_ident() == self._loop_thread:
                # Inside paho's read on the loop: run after it, outside paho's locks.
                self._loop.call_soon(func, *args)
            else:
                self._loop.call_soon_threadsafe(func, *args)

    def on_message(self, message: Message) -> None:
        """A message paho read: into the inbox on the loop, handed over from the thread."""
        # Read on the loop: straight into the inbox, unless the network thread's hand-over
        # still holds earlier messages (order).
        if threading.get_ident() == self._loop_thread and not self._wake_pending:
            self._inbox.put(message)
        else:
            self._arrive(message)

    def _arrive(self, message: Message) -> None:
        # Batched hand-over: one loop wake-up per burst, and bounded even while the loop is
        # blocked (call_soon_threadsafe per message would queue without limit).
        with self._arrivals_lock:
            if len(self._arrivals) == self._arrivals.maxlen:
                self.arrivals_dropped += 1
            self._arrivals.append(message)
            if self._wake_pending:
                return
            self._wake_pending = True
        self.post(self._take_arrivals)

    def _take_arrivals(self) -> None:
        with self._arrivals_lock:
            batch = list(self._arrivals)
            self._arrivals.clear()
            self._wake_pending = False
        for message in batch:
            self._inbox.put(message)

    # -- writing, from any thread ---------------------------------------------------------

    def flush(self) -> None:
        """Write what paho has queued, on the calling thread (no hand-over to another one).

        Never blocks on the lock: paho may call this holding its own locks, and whoever holds
        ours looks at the queue again after releasing it. Whatever the socket cannot take now
        is left to the network thread, which waits for the socket to become writable."""
        client = self._client
        if self._write_lock.acquire(blocking=False):
            try:
                client.loop_write()
            finally:
                self._write_lock.release()
        if client.want_write():
            self._wake_network()

    # -- reading on the loop --------------------------------------------------------------

    def watch(self) -> None:
        """Read paho's socket from the loop. asyncio watches a dup of its fd, so the number
        stays ours until :meth:`unwatch` (paho may close its socket on any thread)."""
        self.unwatch()
        sock = self._client.socket()
        if sock is None:
            return
        fd = os.dup(sock.fileno())
        self._watched = (sock, fd)
        self._loop.add_reader(fd, self._on_readable, sock)

    def unwatch(self, sock: Any = None) -> None:
        """Stop reading on the loop (only if ``sock``, when given, is the socket watched)."""
        watched = self._watched
        if watched is None or (sock is not None and watched[0] is not sock):
            return
        self._watched = None
        self._loop.remove_reader(watched[1])
        os.close(watched[1])

    def _on_readable(self, sock: Any) -> None:
        self._beat = time.monotonic()
        client = self._client
        if client.socket() is not sock:  # paho closed it; on_disconnect is on its way
            self.unwatch(sock)
            return
        if not self._read_lock.acquire(blocking=False):
            return  # the network thread is reading; the fd stays readable until it is done
        try:
            rc = client.loop_read()
            tls = sock if isinstance(sock, ssl.SSLSocket) else None
            while (rc == MQTTErrorCode.MQTT_ERR_SUCCESS and tls is not None and tls.pending()
                   and client.socket() is tls):
                rc = client.loop_read()  # TLS: bytes decrypted already are not readable
        finally:
            self._read_lock.release()
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self.unwatch(sock)

    def heartbeat(self) -> None:
        """Mark the loop alive every tick, so the network thread leaves the reads to it."""
        self._beat = time.monotonic()
        self._beater = self._loop.call_later(self._tick, self.heartbeat)

    def stop_heartbeat(self) -> None:
        if self._beater is not None:
            self._beater.cancel()

    # -- the network thread ---------------------------------------------------------------

    def _wake_network(self) -> None:
        wake = self._wake_w
        # Full: a wake-up is pending anyway. Closed: the thread is gone.
        with contextlib.suppress(AttributeError, OSError):
            wake.send(b"\0")  # type: ignore[union-attr]

    def start(self) -> None:
        """Start the network thread for the connection paho has just opened."""
        self._network_stop.clear()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._network = threading.Thread(target=self._run_network, daemon=True,
                                         name=f"vlabus-mqtt-{self._name}")
        self._network.start()

    def stop(self) -> None:
        """Stop and join the network thread (blocking; call via to_thread on the loop)."""
        thread, self._network = self._network, None
        if thread is None:
            return
        self._network_stop.set()
        self._wake_network()
        if thread is not threading.current_thread():
            thread.join()
        if self._client.want_write():  # e.g. a DISCONNECT queued while the thread was writing
            with self._write_lock:
                self._client.loop_write()
        for end in (self._wake_r, self._wake_w):
            if end is not None:
                end.close()

    def _run_network(self) -> None:
        """The network thread: PINGREQ on time, writes left over by :meth:`flush`, and reads
        while the event loop is stalled (callbacks then hand over to the loop), so a blocked
        loop keeps its connection. Ends when the connection does (paho has then called
        on_disconnect) or on :meth:`stop`."""
        client, wake = self._client, self._wake_r
        assert wake is not None
        # Wake often enough to send PINGREQ well inside the broker's 1.5 x keepalive.
        tick = self._tick
        while not self._network_stop.is_set():
            sock = client.socket()
            if sock is None:
                return
            stalled = time.monotonic() - self._beat > 2 * tick
            pending = sock.pending() if stalled and isinstance(sock, ssl.SSLSocket) else 0
            wanted = [sock] if client.want_write() else []
            try:
                readable, writable, _ = select.select([sock, wake] if stalled else [wake],
                                                      wanted, [], 0.0 if pending else tick)
            except (OSError, ValueError, TypeError):  # closed under us: loop_misc reports it
                readable, writable = [], []
                if client.socket() is not sock:
                    continue
            if wake in readable:
                with contextlib.suppress(BlockingIOError, OSError):
                    wake.recv(4096)
            if sock in readable or pending:
                with self._read_lock:
                    rc = client.loop_read()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return
            if writable or client.want_write():
                with self._write_lock:
                    rc = client.loop_write()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    return
            with self._read_lock:  # not while the loop is inside loop_read
                rc = client.loop_misc()
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
