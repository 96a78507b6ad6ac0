"""Optional end-to-end body sealing: X25519 + ChaCha20-Poly1305 to a worker pool, encrypt then
sign; the decoder opens after the signature and replay guard, before decompression."""

from __future__ import annotations

from pathlib import Path

import msgspec
import numpy as np
import pytest

from schemas.errors import MalformedError, Reason, UnknownKeyError, WireError
from security.keys import add_pool_key, load_pool_key, load_pool_secret
from security.seal import OVERHEAD, Opener, PoolSecret, Sealer
from tests.support.wire import Fleet, craft, frame, header_map
from vlabus.envelope import ENC_LZ4, ENC_SEAL
from vlabus.wire import Encoder


@pytest.fixture
def pool() -> PoolSecret:
    return PoolSecret.generate("gpu")


def test_sealed_roundtrip_hides_the_image(pool: PoolSecret) -> None:
    fleet = Fleet()
    fleet.decoder.opener = Opener([pool])
    message = frame(size=16, noise=True)
    wire = Encoder(fleet.robot, clock=fleet.clock, seal_to=pool.public).encode(message)
    pixels = bytes(message.cameras["front"].data)
    assert pixels[:64] not in wire
    got = fleet.decoder.decode(wire)
    assert got.message == message
    assert got.header.enc & ENC_SEAL


def test_sealed_and_compressed(pool: PoolSecret) -> None:
    fleet = Fleet()
    fleet.decoder.opener = Opener([pool])
    encoder = Encoder(fleet.robot, clock=fleet.clock, seal_to=pool.public, compress="always")
    message = frame(size=64)  # compressible
    wire = encoder.encode(message)
    got = fleet.decoder.decode(wire)
    assert got.header.enc == ENC_LZ4 | ENC_SEAL
    assert got.message == message
    assert len(wire) < len(msgspec.msgpack.encode(message))


def test_without_a_pool_key_sealed_bodies_are_unsupported(pool: PoolSecret) -> None:
    fleet = Fleet()
    wire = Encoder(fleet.robot, clock=fleet.clock, seal_to=pool.public).encode(frame())
    with pytest.raises(WireError) as info:
        fleet.decoder.decode(wire)
    assert info.value.reason is Reason.UNSUPPORTED


def test_another_pools_key_is_unknown(pool: PoolSecret) -> None:
    fleet = Fleet()
    fleet.decoder.opener = Opener([PoolSecret.generate("other")])
    wire = Encoder(fleet.robot, clock=fleet.clock, seal_to=pool.public).encode(frame())
    with pytest.raises(WireError) as info:
        fleet.decoder.decode(wire)
    assert info.value.reason is Reason.UNKNOWN_KEY


def test_signed_garbage_sealed_body_is_malformed(pool: PoolSecret) -> None:
    fleet = Fleet()
    fleet.decoder.opener = Opener([pool])
    sealed = Sealer(pool.public).seal(b"x" * 100, b"other header")  # bound to other bytes
    for seq, body in enumerate((sealed, sealed[:10], pool.public.key_id + bytes(70)), start=1):
        raw_len = max(len(body) - OVERHEAD, 0)
        wire = craft(fleet.robot, header_map(fleet.robot, seq=seq, enc=ENC_SEAL, raw_len=raw_len),
                     body)
        with pytest.raises(WireError) as info:
            fleet.decoder.decode(wire)
        assert info.value.reason is Reason.MALFORMED, seq


def test_flipped_ciphertext_fails_the_signature_first(pool: PoolSecret) -> None:
    fleet = Fleet()
    fleet.decoder.opener = Opener([pool])
    wire = bytearray(Encoder(fleet.robot, clock=fleet.clock, seal_to=pool.public).encode(frame()))
    wire[-80] ^= 1
    with pytest.raises(WireError) as info:
        fleet.decoder.decode(bytes(wire))
    assert info.value.reason is Reason.BAD_SIGNATURE


def test_sealer_nonces_never_repeat_and_opener_caches(pool: PoolSecret) -> None:
    sealer = Sealer(pool.public)
    opener = Opener([pool], cache=2)
    nonces = set()
    for i in range(50):
        sealed = sealer.seal(b"body %d" % i, b"aad")
        nonces.add(sealed[40:52])
        assert opener.open(sealed, b"aad") == b"body %d" % i
    assert len(nonces) == 50
    with pytest.raises(MalformedError):
        opener.open(sealer.seal(b"b", b"aad"), b"another aad")
    # many senders: the derived-key cache stays bounded and still opens everything
    for _ in range(5):
        assert opener.open(Sealer(pool.public).seal(b"z", b""), b"") == b"z"
    assert len(opener._cache) == 2


def test_opener_rejects_unknown_pool_and_low_order_points(pool: PoolSecret) -> None:
    opener = Opener([pool])
    with pytest.raises(UnknownKeyError):
        opener.open(bytes(8) + bytes(32) + bytes(12) + bytes(16), b"")
    with pytest.raises(MalformedError):  # the all-zero point gives an all-zero shared secret
        opener.open(pool.public.key_id + bytes(32) + bytes(12) + bytes(16), b"")


def test_pool_key_files(tmp_path: Path) -> None:
    secret = add_pool_key(tmp_path, "gpu")
    public = load_pool_key(tmp_path, "gpu")
    assert public.key_id == secret.public.key_id
    loaded = load_pool_secret(tmp_path, "gpu")
    sealed = Sealer(public).seal(np.arange(10).tobytes(), b"h")
    assert Opener([loaded]).open(sealed, b"h") == np.arange(10).tobytes()
