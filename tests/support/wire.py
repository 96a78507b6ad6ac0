"""The wire tests' fleet (two robots and a worker), their small frame, crafted envelopes."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from schemas.messages import Frame
from security.keys import Keyring, Signer
from security.replay import ReplayGuard
from tests.support.clock import FakeClock
from tests.support.frames import make_frame
from vlabus.envelope import Limits
from vlabus.wire import Decoder, Encoder

NOW = 1_700_000_000_000_000_000


@dataclass
class Fleet:
    """Two robots and a worker, a decoder that trusts them, and one encoder per robot."""

    clock: FakeClock = field(default_factory=lambda: FakeClock(NOW))
    robot: Signer = field(default_factory=lambda: Signer.generate("robot", "robot-a"))
    other: Signer = field(default_factory=lambda: Signer.generate("robot", "robot-b"))
    worker: Signer = field(default_factory=lambda: Signer.generate("worker", "worker-1"))
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        self.ring = Keyring([self.robot.public, self.other.public, self.worker.public])
        self.guard = ReplayGuard(clock=self.clock)
        self.decoder = Decoder(self.ring, self.guard, limits=self.limits)
        self.encoder = Encoder(self.robot, clock=self.clock, start_seq=1)


def frame(step: int = 1, robot_id: str = "robot-a", size: int = 8, *,
          noise: bool = False) -> Frame:
    """The wire tests' small frame: compressible unless ``noise``, captured at ``NOW``."""
    return make_frame(robot_id, step, size=size, noise=noise, command="pick",
                      state=np.ones(4, np.float32), capture_ns=NOW)


def header_map(signer: Signer, **overrides: Any) -> dict[str, Any]:
    header: dict[str, Any] = {
        "kind": "frame", "sender": signer.identity, "key": signer.key_id, "seq": 1,
        "sent_ns": NOW, "deadline_ns": 0, "priority": 2, "corr": "", "enc": 0, "raw_len": 0,
    }
    header.update(overrides)
    return header


def craft(signer: Signer, header: dict[str, Any] | bytes, body: bytes, *,
          version: int = 1, sign: bool = True) -> bytes:
    """An envelope with any header and body, validly signed unless ``sign`` is false."""
    head = header if isinstance(header, bytes) else msgpack.packb(header)
    prefix = struct.pack(">2sBH", b"VB", version, len(head)) + head
    signature = signer.sign(prefix, body) if sign else bytes(64)
    return prefix + body + signature


def body_of(message: Frame) -> bytes:
    import msgspec

    return msgspec.msgpack.encode(message)
