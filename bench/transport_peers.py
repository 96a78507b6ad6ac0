"""The far ends of ``bench.transport``: echo peers and bare hubs, each run in its own process.

Every echo answers a message on its ping topic with the same payload on its pong topic. Each
function blocks until its process is terminated; ``ready`` receives the port it bound, if any.
"""

from __future__ import annotations

import asyncio
import socket
from multiprocessing.queues import Queue
from typing import Any

import paho.mqtt.client as mqtt
import zmq
from paho.mqtt.enums import CallbackAPIVersion

from vlabus.bus.transport import open_transport
from vlabus.hub import protocol as hub_protocol

PING, PONG = "bench/ping", "bench/pong"


def vlabus_echo(url: str, options: Any, ping: str, pong: str) -> None:
    """Echo ``ping`` to ``pong`` through a vlabus transport (the adapter under test)."""
    async def run() -> None:
        bus = await open_transport(url, options)
        await bus.subscribe(ping)
        async for message in bus:
            await bus.publish(pong, message.payload)

    asyncio.run(run())


def no_delay(_client: mqtt.Client, _userdata: Any, sock: Any) -> None:
    """paho's ``on_socket_open``: turn Nagle off on the TCP socket."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def paho_echo(port: int, username: str | None, password: str | None, ping: str,
              pong: str) -> None:
    """Echo with bare paho (MQTT 5, TCP_NODELAY), answering from the network thread."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-echo-bare",
                         protocol=mqtt.MQTTv5)
    if username:
        client.username_pw_set(username, password)
    client.on_socket_open = no_delay
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(ping, qos=0)

    def echo(c: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        c.publish(pong, msg.payload, qos=0)

    client.on_message = echo
    client.connect("127.0.0.1", port)
    client.loop_forever()


def zmq_forwarder(ready: Queue[int]) -> None:
    """A bare ROUTER hop in Python: [dest, payload] from src goes out as [src, payload] to dest."""
    router: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    ready.put(router.bind_to_random_port("tcp://127.0.0.1"))
    while True:
        src, dest, payload = router.recv_multipart(copy=False)
        router.send_multipart([dest, src, payload], copy=False)


def zmq_forwarder_echo(port: int) -> None:

    dealer: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, b"echo")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    while True:
        src, payload = dealer.recv_multipart(copy=False)
        dealer.send_multipart([src, payload], copy=False)


def zmq_proxy(ready: Queue[int]) -> None:
    """The C device: ``zmq.proxy(XSUB, XPUB)``, no Python on the message path."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    xsub, xpub = ctx.socket(zmq.XSUB), ctx.socket(zmq.XPUB)
    ready.put(xsub.bind_to_random_port("tcp://127.0.0.1"))
    ready.put(xpub.bind_to_random_port("tcp://127.0.0.1"))
    zmq.proxy(xsub, xpub)


def zmq_proxy_echo(xsub_port: int, xpub_port: int) -> None:

    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sub, pub = ctx.socket(zmq.SUB), ctx.socket(zmq.PUB)
    sub.setsockopt(zmq.SUBSCRIBE, PING.encode())
    sub.connect(f"tcp://127.0.0.1:{xpub_port}")
    pub.connect(f"tcp://127.0.0.1:{xsub_port}")
    while True:
        _, payload = sub.recv_multipart(copy=False)
        pub.send_multipart([PONG.encode(), payload], copy=False)


def zmq_direct_echo(ready: Queue[int]) -> None:
    """No hub: a ROUTER that sends every message back to its sender."""
    router: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
    ready.put(router.bind_to_random_port("tcp://127.0.0.1"))
    while True:
        router.send_multipart(router.recv_multipart(copy=False), copy=False)



def hub_protocol_echo(port: int, ping: str, pong: str) -> None:
    """Bare sync pyzmq speaking the vlabus hub's wire protocol (no adapter, no asyncio)."""
    dealer: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    dealer.send_multipart(hub_protocol.sub(ping))
    head = hub_protocol.pub_head(pong.encode())
    while True:
        _, payload = dealer.recv_multipart(copy=False)
        dealer.send_multipart([head, payload], copy=False)
