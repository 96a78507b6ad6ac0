"""`vlabus echo`: live traffic verified and decoded on a real hub, rejected messages with their
reason, ``--count`` stops, ``--raw`` shows the bytes."""

from __future__ import annotations

import argparse
import asyncio
import json

import pytest

from security.keys import Signer
from tests.support.frames import make_frame
from tests.support.keys import KeyDir
from vlabus.bus.transport import TransportOptions, open_transport
from vlabus.cli.echo import echo_command, register
from vlabus.hub.server import Hub
from vlabus.wire import Encoder


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["echo", *argv])


async def run_echo(hub: Hub, keydir: KeyDir, *flags: str) -> int:
    args = parse("vla/v1/+/frame", "--bus", hub.url, "--keys", str(keydir.path), "--count", "2",
                 *flags)
    task = asyncio.create_task(echo_command(args))
    publisher = await open_transport(hub.url, TransportOptions(client_id="pub"))
    stranger = Encoder(Signer.generate("robot", "robot-x"))  # a key the keyring lacks
    frame = Encoder(keydir.signers["robot-a"]).encode(make_frame("robot-a", 7))
    while not task.done():  # until echo has subscribed and taken both
        await publisher.publish("vla/v1/robot-a/frame", frame)
        await publisher.publish("vla/v1/robot-x/frame", stranger.encode(make_frame("robot-x")))
        await publisher.publish("vla/v1/robot-a/action", frame)  # outside the filter
        await asyncio.sleep(0.05)
    await publisher.close()
    return task.result()


@pytest.mark.parametrize("mode", ["json", "human", "raw"])
def test_echo_shows_verified_and_rejected_messages(zmq_hub: Hub, keydir: KeyDir, mode: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    flags = {"json": ["--json"], "human": [], "raw": ["--raw"]}[mode]
    assert asyncio.run(run_echo(zmq_hub, keydir, *flags)) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2  # --count 2
    topics = [json.loads(line)["topic"] if mode == "json" else line.split()[0]
              for line in lines]
    assert all(t.startswith("vla/v1/robot-") and t.endswith("/frame") for t in topics)
    if mode == "json":
        docs = [json.loads(line) for line in lines]
        good = [d for d in docs if d.get("verified")]
        bad = [d for d in docs if d.get("verified") is False]
        assert good or bad
        for doc in good:
            assert doc["kind"] == "frame"
            assert doc["header"]["sender"] == "robot-a"
            assert doc["message"]["state"]["shape"] == [14]
            assert doc["age_ms"] >= 0
        for doc in bad:
            assert doc["error"]["reason"] == "unknown_key"
    elif mode == "human":
        for line in lines:
            assert ("frame  from robot-a #" in line and "float32[14]" in line) or \
                "REJECTED unknown_key" in line, line
    else:
        assert all(" bytes  " in line for line in lines)
