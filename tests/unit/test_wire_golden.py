"""Golden vectors: the committed bytes are what the Encoder produces, the Decoder accepts, and
what a foreign implementation can rebuild with plain msgpack, lz4, BLAKE3, Ed25519 and
X25519/ChaCha20-Poly1305 following docs/wire.md (no vlabus code in the checks)."""

from __future__ import annotations

import json
import struct
from typing import Any

import blake3
import lz4.frame
import msgpack
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from security.keys import Keyring
from security.replay import ReplayGuard
from security.seal import Opener
from tests.golden.vectors import PATH, SENT_NS, Vector, plain, pool_secret, render, vectors
from vlabus.wire import Decoder

# Pinned here on purpose (not imported): changing either is a wire format change.
CONTEXT = b"vlabus/v1 ed25519-blake3\x00"
SEAL_INFO = b"vlabus/v1 seal x25519-chacha20poly1305\x00"

GOLDEN: dict[str, Any] = json.loads(PATH.read_text())
BY_NAME = {v["name"]: v for v in GOLDEN["vectors"]}
VECTORS = {v.name: v for v in vectors()}


def test_every_vector_is_committed() -> None:
    assert set(BY_NAME) == set(VECTORS)
    assert render() == GOLDEN


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_encoder_reproduces_exact_bytes(name: str) -> None:
    assert VECTORS[name].encode().hex() == BY_NAME[name]["envelope"]


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_decoder_accepts_and_returns_the_message(name: str) -> None:
    vec: Vector = VECTORS[name]
    ring = Keyring([vec.signer().public])
    decoder = Decoder(ring, ReplayGuard(clock=lambda: SENT_NS), opener=Opener([pool_secret()]))
    got = decoder.decode(bytes.fromhex(BY_NAME[name]["envelope"]))
    assert got.message == vec.message
    assert got.header.seq == vec.seq
    assert got.role == vec.role


def _open_sealed(sealed: bytes, aad: bytes) -> bytes:
    """Independent implementation of the sealed body, from docs/wire.md."""
    pool = X25519PrivateKey.from_private_bytes(bytes.fromhex(GOLDEN["pool"]["seed"]))
    pool_raw = pool.public_key().public_bytes_raw()
    assert sealed[:8].hex() == GOLDEN["pool"]["key_id"]
    eph = sealed[8:40]
    shared = pool.exchange(X25519PublicKey.from_public_bytes(eph))
    key = HKDF(hashes.SHA256(), 32, salt=None, info=SEAL_INFO + eph + pool_raw).derive(shared)
    return ChaCha20Poly1305(key).decrypt(sealed[40:52], sealed[52:], aad)


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_plain_libraries_decode_the_envelope(name: str) -> None:
    vec = BY_NAME[name]
    wire = bytes.fromhex(vec["envelope"])
    magic, version, hlen = struct.unpack(">2sBH", wire[:5])
    assert (magic, version) == (b"VB", 1)
    header = msgpack.unpackb(wire[5: 5 + hlen])
    assert plain(header) == vec["header"]
    assert header["sender"] == vec["id"]
    assert header["key"] == vec["key_id"]
    # signature: Ed25519 over context + BLAKE3-256 of every byte before it
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(vec["public_key"]))
    public.verify(wire[-64:], CONTEXT + blake3.blake3(wire[:-64]).digest())
    body = wire[5 + hlen: -64]
    if header["enc"] & 2:
        body = _open_sealed(body, wire[: 5 + hlen])
    if header["enc"] & 1:
        assert lz4.frame.get_frame_info(body)["content_size"] == header["raw_len"]
        body = lz4.frame.decompress(body)
    assert len(body) == header["raw_len"]
    assert plain(msgpack.unpackb(body)) == vec["body"]


def test_vectors_cover_each_encoding() -> None:
    encodings = {v["header"]["enc"] for v in GOLDEN["vectors"]}
    assert encodings == {0, 1, 2}
