"""Optional end-to-end body encryption to a worker pool's X25519 key (encrypt, then sign).

For fleets that do not trust the broker operator with camera images. A sender seals each body
to the pool's public key; only processes holding the pool's private key open it. The envelope
signature still covers the exact wire bytes (the sealed body included), so the receiver
verifies and replay-checks before spending anything on decryption.

Sealed body layout::

    | pool key id (8) | ephemeral X25519 public key (32) | nonce (12) | ChaCha20-Poly1305 ct+tag |

* pool key id — the first 8 bytes of SHA-256 over the pool's raw 32-byte X25519 public key.
* key — HKDF-SHA256(ikm = X25519(ephemeral, pool), salt = empty,
  info = ``SEAL_INFO`` + ephemeral public + pool public), 32 bytes.
* nonce — 4 zero bytes + a big-endian 64-bit counter, unique per ephemeral key.
* associated data — every envelope byte before the body (magic, version, header length, header).

A :class:`Sealer` keeps one ephemeral key per sender session (one X25519 per session, not per
message) and renews it before its nonce counter could wrap. An :class:`Opener` caches the
derived AEAD per ephemeral key in a bounded LRU.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from schemas.errors import MalformedError, UnknownKeyError

SEAL_INFO = b"vlabus/v1 seal x25519-chacha20poly1305\x00"
POOL_ID_SIZE = 8
EPHEMERAL_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
OVERHEAD = POOL_ID_SIZE + EPHEMERAL_SIZE + NONCE_SIZE + TAG_SIZE
_MAX_COUNTER = (1 << 64) - 1


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def pool_key_id(public: X25519PublicKey) -> bytes:
    """The 8-byte id of a pool key: SHA-256 of its raw public key, truncated."""
    return hashlib.sha256(_raw(public)).digest()[:POOL_ID_SIZE]


def _derive(shared: bytes, ephemeral: bytes, pool: bytes) -> ChaCha20Poly1305:
    kdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=SEAL_INFO + ephemeral + pool)
    return ChaCha20Poly1305(kdf.derive(shared))


@dataclass(frozen=True, slots=True)
class PoolKey:
    """A worker pool's public encryption key, as senders know it."""

    pool: str
    key: X25519PublicKey

    @property
    def key_id(self) -> bytes:
        return pool_key_id(self.key)


@dataclass(frozen=True, slots=True)
class PoolSecret:
    """A worker pool's private encryption key."""

    pool: str
    key: X25519PrivateKey

    @property
    def public(self) -> PoolKey:
        return PoolKey(self.pool, self.key.public_key())

    @classmethod
    def generate(cls, pool: str) -> PoolSecret:
        return cls(pool, X25519PrivateKey.generate())


class Sealer:
    """Seals bodies to one pool key. ``ephemeral`` is injectable for golden vectors only."""

    def __init__(self, pool: PoolKey, *, ephemeral: X25519PrivateKey | None = None) -> None:
        self.pool = pool
        self._pool_id = pool.key_id
        self._pool_raw = _raw(pool.key)
        self._renew(ephemeral or X25519PrivateKey.generate())

    def _renew(self, ephemeral: X25519PrivateKey) -> None:
        eph_raw = _raw(ephemeral.public_key())
        self._aead = _derive(ephemeral.exchange(self.pool.key), eph_raw, self._pool_raw)
        self._head = self._pool_id + eph_raw
        self._counter = 0

    def seal(self, body: bytes | memoryview, aad: bytes) -> bytes:
        """Return the sealed form of ``body`` bound to ``aad``."""
        if self._counter >= _MAX_COUNTER:
            self._renew(X25519PrivateKey.generate())
        nonce = self._counter.to_bytes(NONCE_SIZE, "big")
        self._counter += 1
        return self._head + nonce + self._aead.encrypt(nonce, bytes(body), aad)


class Opener:
    """Opens bodies sealed to any of the pool secrets it holds."""

    def __init__(self, secrets: Iterable[PoolSecret], *, cache: int = 1024) -> None:
        self._secrets = {s.public.key_id: (s, _raw(s.key.public_key())) for s in secrets}
        self._cache: OrderedDict[bytes, ChaCha20Poly1305] = OrderedDict()
        self._cache_size = cache

    def __len__(self) -> int:
        return len(self._secrets)

    def open(self, sealed: bytes | memoryview, aad: bytes | memoryview) -> bytes:
        """Return the plaintext; ``UnknownKeyError`` for another pool, ``MalformedError`` when
        the body is too short or does not authenticate."""
        view = memoryview(sealed)
        if len(view) < OVERHEAD:
            raise MalformedError(f"sealed body of {len(view)} bytes is shorter than {OVERHEAD}")
        pool_id = bytes(view[:POOL_ID_SIZE])
        entry = self._secrets.get(pool_id)
        if entry is None:
            raise UnknownKeyError(f"pool:{pool_id.hex()}")
        head = POOL_ID_SIZE + EPHEMERAL_SIZE
        cache_key = bytes(view[:head])
        aead = self._cache.get(cache_key)
        if aead is None:
            secret, pool_raw = entry
            eph_raw = cache_key[POOL_ID_SIZE:]
            try:
                shared = secret.key.exchange(X25519PublicKey.from_public_bytes(eph_raw))
            except ValueError as exc:  # low-order point: the exchange yields all zeros
                raise MalformedError(f"bad ephemeral key: {exc}") from exc
            aead = _derive(shared, eph_raw, pool_raw)
            self._cache[cache_key] = aead
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(cache_key)
        nonce = bytes(view[head: head + NONCE_SIZE])
        try:
            return aead.decrypt(nonce, view[head + NONCE_SIZE:], aad)
        except InvalidTag as exc:
            raise MalformedError("sealed body does not authenticate") from exc
