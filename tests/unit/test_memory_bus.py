"""memory:// honours message expiry like the real buses, and the consume API's two styles."""

from __future__ import annotations

import asyncio
import itertools

from vlabus.bus.memory import reset_memory
from vlabus.bus.transport import Message, Transport, TransportOptions, open_transport

_names = itertools.count()


async def connect(url: str, client_id: str) -> Transport:
    return await open_transport(url, TransportOptions(client_id=client_id))


def memory_url() -> str:
    name = f"expiry-{next(_names)}"
    reset_memory(name)
    return f"memory://{name}"


def test_a_retained_message_is_forgotten_once_it_expires() -> None:
    async def body() -> None:
        url = memory_url()
        pub = await connect(url, "pub")
        await pub.publish("vla/v1/a/status", b"short", retain=True, expiry_s=0.05)
        await pub.publish("vla/v1/b/status", b"kept", retain=True)
        await asyncio.sleep(0.1)  # let the first one's expiry pass
        sub = await connect(url, "sub")
        await sub.subscribe("vla/v1/+/status")
        await pub.publish("vla/v1/marker/status", b"marker")
        got = [bytes((await asyncio.wait_for(sub.receive(), 5)).payload) for _ in range(2)]
        assert got == [b"kept", b"marker"]
        await sub.close()
        await pub.close()

    asyncio.run(body())


def test_a_publish_already_expired_reaches_nobody_and_is_counted() -> None:
    async def body() -> None:
        url = memory_url()
        pub, sub = await connect(url, "pub"), await connect(url, "sub")
        await sub.subscribe("vla/v1/a/frame")
        await pub.publish("vla/v1/a/frame", b"stale", expiry_s=0.0)
        await pub.publish("vla/v1/a/frame", b"fresh", expiry_s=5.0)
        assert bytes((await asyncio.wait_for(sub.receive(), 5)).payload) == b"fresh"
        assert pub.counters()["expired"] == 1
        await sub.close()
        await pub.close()

    asyncio.run(body())


def test_push_and_pull_share_one_inbox_and_iteration_ends_at_close() -> None:
    async def body() -> None:
        url = memory_url()
        pub, sub = await connect(url, "pub"), await connect(url, "sub")
        await sub.subscribe("t/#")
        pushed: list[bytes] = []

        def handler(message: Message) -> bool:
            pushed.append(bytes(message.payload))
            return message.topic == "t/push"  # anything else is left for the pull side

        sub.consume(handler)
        await pub.publish("t/push", b"1")
        await pub.publish("t/pull", b"2")
        await pub.publish("t/push", b"3")  # queued behind "2": order is kept
        sub.consume(None)
        await pub.publish("t/push", b"4")
        assert pushed == [b"1", b"2"]
        assert sub.receive_nowait() is not None
        await sub.close()  # what is queued stays readable; then the iteration ends
        pulled = [bytes(message.payload) async for message in sub]
        assert pulled == [b"3", b"4"]
        assert sub.receive_nowait() is None
        await pub.close()

    asyncio.run(body())
