"""Golden envelope vectors: fixed keys, messages, sequence numbers and times -> exact bytes.

``python -m tests.golden.vectors`` rewrites ``envelopes.json`` (only when the format changes on
purpose; the test compares against the committed file). Every input a foreign implementation
needs is in the JSON: key seeds, the header and body as plain JSON (binary as ``{"bin": hex}``)
and the envelope as hex.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from schemas.arrays import pack_array
from schemas.images import encode_image
from schemas.messages import Action, Frame, Message, Priority, Status
from security.keys import Signer, key_id_of
from security.seal import PoolSecret, Sealer
from vlabus.wire import Encoder

PATH = Path(__file__).with_name("envelopes.json")
SENT_NS = 1_700_000_000_123_456_789
ROBOT_SEED = bytes([1]) * 32
WORKER_SEED = bytes([2]) * 32
POOL_SEED = bytes([3]) * 32
EPHEMERAL_SEED = bytes([4]) * 32


@dataclass(frozen=True)
class Vector:
    name: str
    role: str
    identity: str
    seed: bytes
    message: Message
    seq: int
    deadline_ns: int = 0
    priority: int = Priority.NORMAL
    corr: str = ""
    sealed: bool = False

    def signer(self) -> Signer:
        key = Ed25519PrivateKey.from_private_bytes(self.seed)
        return Signer(key_id_of(key.public_key()), self.role, self.identity, key)  # type: ignore[arg-type]

    def encode(self) -> bytes:
        seal = Sealer(pool_secret().public, ephemeral=X25519PrivateKey.from_private_bytes(
            EPHEMERAL_SEED)) if self.sealed else None
        encoder = Encoder(self.signer(), start_seq=self.seq, seal_to=seal)
        return encoder.encode(self.message, deadline_ns=self.deadline_ns, priority=self.priority,
                              corr=self.corr, sent_ns=SENT_NS)


def pool_secret() -> PoolSecret:
    return PoolSecret("gpu", X25519PrivateKey.from_private_bytes(POOL_SEED))


def _small_frame(step: int) -> Frame:
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    return Frame(robot_id="robot-a", step=step, cameras={"wrist": encode_image(pixels)},
                 command="pick up the red cube",
                 state=pack_array(np.array([0.5, -1.25, 3.0], dtype=np.float32)),
                 capture_ns=SENT_NS - 1_000_000)


def vectors() -> list[Vector]:
    """The golden set; each exercises one part of the format."""
    striped = np.zeros((32, 32, 3), dtype=np.uint8)
    striped[:, ::4] = 200  # compresses well, so the Encoder chooses lz4
    compressible = Frame(robot_id="robot-a", step=2, cameras={"front": encode_image(striped)},
                         command="stack the blocks", state=pack_array(np.zeros(2, np.float32)),
                         capture_ns=SENT_NS, safety_critical=True)
    chunk = np.arange(6, dtype=np.float32).reshape(2, 3) / 4
    action = Action(robot_id="robot-a", step=7, actions=pack_array(chunk), period_ns=20_000_000,
                    model="pi0", model_version=3, worker_id="worker-1", queue_wait_ns=1500,
                    inference_ns=250_000)
    status = Status(client_id="robot-a", role="robot", state="online", session=4,
                    time_ns=SENT_NS, models={"pi0": 3})
    return [
        Vector("frame_raw", "robot", "robot-a", ROBOT_SEED, _small_frame(7), seq=1000,
               deadline_ns=SENT_NS + 50_000_000, corr="robot-a/7"),
        Vector("frame_lz4", "robot", "robot-a", ROBOT_SEED, compressible, seq=1001),
        Vector("action_chunk", "worker", "worker-1", WORKER_SEED, action, seq=5,
               priority=Priority.HIGH, corr="robot-a/7"),
        Vector("status", "robot", "robot-a", ROBOT_SEED, status, seq=1002),
        Vector("frame_sealed", "robot", "robot-a", ROBOT_SEED, _small_frame(8), seq=1003,
               sealed=True),
    ]


def plain(value: Any) -> Any:
    """msgpack-decoded value -> JSON value (binary as ``{"bin": hex}``)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"bin": bytes(value).hex()}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def raw_public(vector: Vector) -> str:
    return vector.signer().key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


def render() -> dict[str, Any]:
    """The JSON document: keys, then one entry per vector."""
    import lz4.frame
    import msgpack

    from security.seal import Opener

    pool = pool_secret()
    out: list[dict[str, Any]] = []
    for vec in vectors():
        wire = vec.encode()
        hlen = int.from_bytes(wire[3:5], "big")
        header = msgpack.unpackb(wire[5: 5 + hlen])
        body = wire[5 + hlen: -64]
        if header["enc"] & 2:
            body = Opener([pool]).open(body, wire[: 5 + hlen])
        if header["enc"] & 1:
            body = lz4.frame.decompress(body)
        out.append({
            "name": vec.name, "role": vec.role, "id": vec.identity, "seed": vec.seed.hex(),
            "public_key": raw_public(vec), "key_id": vec.signer().key_id,
            "header": plain(header), "body": plain(msgpack.unpackb(body)),
            "envelope": wire.hex(),
        })
    return {
        "format": "vlabus envelope v1",
        "pool": {"id": "gpu", "seed": POOL_SEED.hex(), "key_id": pool.public.key_id.hex(),
                 "ephemeral_seed": EPHEMERAL_SEED.hex()},
        "vectors": out,
    }


if __name__ == "__main__":
    PATH.write_text(json.dumps(render(), indent=1) + "\n")
    print(f"wrote {PATH}")
