"""Ed25519 identities and the keyring directory.

Layout of a keyring directory (one folder per role, one PEM pair per identity)::

    DIR/robot/robot-a.pub.pem     public key (0644)
    DIR/robot/robot-a.key.pem     private key (0600, PKCS#8, unencrypted)
    DIR/worker/worker-1.pub.pem
    DIR/release/release.pub.pem
    DIR/replay/replay.pub.pem
    DIR/recorder/recorder.pub.pem a fleet recorder: reads the bus, may send nothing
    DIR/root/root.pub.pem         the offline recovery key of model releases (its private key
                                  stays off every fleet machine; docs/hardening.md)
    DIR/pool/gpu.pub.pem          X25519 public key of worker pool "gpu" (optional sealing)
    DIR/pool/gpu.key.pem          X25519 private key (0600), only on that pool's workers

A key id is the first 16 hex digits of SHA-256 over the raw 32-byte public key. A robot's
machine needs its own private key and the public keys of workers and release signers; a worker
needs its own private key and the robots' public keys.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import blake3
import nacl.bindings
import nacl.exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from schemas.errors import KeyringError
from schemas.topics import check_id
from security.seal import PoolKey, PoolSecret

Role = Literal["robot", "worker", "release", "replay", "recorder", "root"]
ROLES: tuple[Role, ...] = ("robot", "worker", "release", "replay", "recorder", "root")
#: The folder of X25519 pool keys used to seal bodies; not a signing role.
POOL = "pool"
#: Every folder of a keyring directory (``vlabus keys add`` accepts each).
KEY_ROLES: tuple[str, ...] = (*ROLES, POOL)

#: Signatures cover this context string followed by the BLAKE3 digest of the signed bytes.
SIGNING_CONTEXT = b"vlabus/v1 ed25519-blake3\x00"


def key_id_of(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signed_digest(*parts: bytes | memoryview) -> bytes:
    """The 57 bytes Ed25519 signs: context + BLAKE3-256 over ``parts`` concatenated."""
    hasher = blake3.blake3()
    for part in parts:
        hasher.update(part)
    return SIGNING_CONTEXT + hasher.digest()


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A known identity: who it is, what role it plays, and its verifying key."""

    key_id: str
    role: Role
    identity: str
    key: Ed25519PublicKey
    # The raw key for libsodium, extracted once: its verify costs ~37 µs here, OpenSSL's ~60.
    _raw: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_raw", self.key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw))

    def verify(self, signature: bytes | memoryview, *parts: bytes | memoryview) -> bool:
        if len(signature) != 64:
            return False
        try:
            nacl.bindings.crypto_sign_open(bytes(signature) + signed_digest(*parts), self._raw)
        except nacl.exceptions.BadSignatureError:
            return False
        return True


@dataclass(frozen=True, slots=True)
class Signer:
    """A private identity that signs envelopes."""

    key_id: str
    role: Role
    identity: str
    key: Ed25519PrivateKey
    # libsodium's 64-byte secret key (seed + public), derived once; signing costs ~13 µs
    # there, ~19 µs through OpenSSL. Ed25519 is deterministic: the signatures are identical.
    _secret: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        seed = self.key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                      serialization.NoEncryption())
        object.__setattr__(self, "_secret", nacl.bindings.crypto_sign_seed_keypair(seed)[1])

    def sign(self, *parts: bytes | memoryview) -> bytes:
        signed: bytes = nacl.bindings.crypto_sign(signed_digest(*parts), self._secret)
        return signed[:64]  # crypto_sign returns signature + message

    @property
    def public(self) -> PublicKey:
        return PublicKey(self.key_id, self.role, self.identity, self.key.public_key())

    @classmethod
    def generate(cls, role: Role, identity: str) -> Signer:
        """A fresh in-memory identity (tests, throwaway demos)."""
        key = Ed25519PrivateKey.generate()
        return cls(key_id_of(key.public_key()), role, check_id(identity), key)


class Keyring:
    """The public keys a process trusts, looked up by key id."""

    def __init__(self, keys: Iterable[PublicKey] = ()) -> None:
        self._by_id: dict[str, PublicKey] = {}
        for key in keys:
            self.add(key)

    def add(self, key: PublicKey) -> None:
        """Trust ``key``; one key may not serve two identities or roles (a robot key copied
        into ``release/`` would otherwise let that robot sign model releases)."""
        known = self._by_id.get(key.key_id)
        if known is not None and (known.role, known.identity) != (key.role, key.identity):
            raise KeyringError(
                f"key {key.key_id} is both {known.role}/{known.identity} and "
                f"{key.role}/{key.identity}")
        self._by_id[key.key_id] = key

    def get(self, key_id: str) -> PublicKey | None:
        return self._by_id.get(key_id)

    def replace(self, other: Keyring) -> tuple[list[PublicKey], list[PublicKey]]:
        """Trust exactly ``other``'s keys from now on, in place (every decoder holding this
        keyring sees the change at its next message); returns (added, removed)."""
        added = [key for kid, key in other._by_id.items() if kid not in self._by_id]
        removed = [key for kid, key in self._by_id.items() if kid not in other._by_id]
        self._by_id = dict(other._by_id)
        return added, removed

    def find(self, role: Role, identity: str) -> PublicKey | None:
        for key in self._by_id.values():
            if key.role == role and key.identity == identity:
                return key
        return None

    def __iter__(self) -> Iterator[PublicKey]:
        return iter(sorted(self._by_id.values(), key=lambda k: (k.role, k.identity)))

    def __len__(self) -> int:
        return len(self._by_id)

    @classmethod
    def load(cls, directory: str | Path) -> Keyring:
        """Read every ``ROLE/ID.pub.pem`` under ``directory``, and every flat
        ``ROLE.ID.pub.pem`` at its top (the layout of a Kubernetes ConfigMap volume)."""
        root = Path(directory)
        if not root.is_dir():
            raise KeyringError(f"keyring directory {root} does not exist (run `vlabus keys init`)")
        keys = []
        for role in ROLES:
            paths = [*sorted((root / role).glob("*.pub.pem")),
                     *sorted(root.glob(f"{role}.*.pub.pem"))]
            for path in paths:
                identity = path.name.removesuffix(".pub.pem").removeprefix(f"{role}.")
                public = _read_public(path)
                keys.append(PublicKey(key_id_of(public), role, identity, public))
        return cls(keys)


def init_keyring(directory: str | Path) -> Path:
    """Create the role folders of a keyring directory (idempotent)."""
    root = Path(directory)
    for role in KEY_ROLES:
        (root / role).mkdir(parents=True, exist_ok=True)
    return root


def add_key(directory: str | Path, role: Role, identity: str, *, overwrite: bool = False) -> Signer:
    """Generate a key pair for ``identity`` and write it into the keyring (private key 0600)."""
    if role not in ROLES:
        raise KeyringError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    check_id(identity)
    folder = init_keyring(directory) / role
    private_path = folder / f"{identity}.key.pem"
    if private_path.exists() and not overwrite:
        raise KeyringError(f"{private_path} exists; refusing to replace a key")
    signer = Signer.generate(role, identity)
    pem = signer.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_private(private_path, pem)
    public_pem = signer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (folder / f"{identity}.pub.pem").write_bytes(public_pem)
    return signer


def load_signer(directory: str | Path, role: Role, identity: str) -> Signer:
    """Load the private key of ``identity`` (``ROLE/ID.key.pem``, or flat ``ROLE.ID.key.pem``
    as a Kubernetes Secret volume holds it); refuses files others may read (see
    :func:`_read_private`)."""
    path = Path(directory) / role / f"{identity}.key.pem"
    flat = Path(directory) / f"{role}.{identity}.key.pem"
    if not path.exists() and flat.exists():
        path = flat
    key = _read_private(path)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyringError(f"{path} is not an Ed25519 private key")
    return Signer(key_id_of(key.public_key()), role, identity, key)


def add_pool_key(directory: str | Path, pool: str, *, overwrite: bool = False) -> PoolSecret:
    """Generate the X25519 sealing key of worker pool ``pool`` (private key 0600)."""
    check_id(pool)
    folder = init_keyring(directory) / POOL
    private_path = folder / f"{pool}.key.pem"
    if private_path.exists() and not overwrite:
        raise KeyringError(f"{private_path} exists; refusing to replace a key")
    secret = PoolSecret.generate(pool)
    _write_private(private_path, secret.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    (folder / f"{pool}.pub.pem").write_bytes(secret.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ))
    return secret


def load_pool_key(directory: str | Path, pool: str) -> PoolKey:
    """The public sealing key of ``pool`` (what robots need to seal frames to it)."""
    path = Path(directory) / POOL / f"{pool}.pub.pem"
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise KeyringError(f"cannot load pool key {path}: {exc}") from exc
    if not isinstance(key, X25519PublicKey):
        raise KeyringError(f"{path} is not an X25519 public key")
    return PoolKey(pool, key)


def load_pool_secret(directory: str | Path, pool: str) -> PoolSecret:
    """The private sealing key of ``pool``; refuses files readable by group or others."""
    path = Path(directory) / POOL / f"{pool}.key.pem"
    key = _read_private(path)
    if not isinstance(key, X25519PrivateKey):
        raise KeyringError(f"{path} is not an X25519 private key")
    return PoolSecret(pool, key)


def list_pool_keys(directory: str | Path) -> list[PoolKey]:
    """Every pool public key under ``directory``, sorted by pool name."""
    folder = Path(directory) / POOL
    return [load_pool_key(directory, p.name.removesuffix(".pub.pem"))
            for p in sorted(folder.glob("*.pub.pem"))]


def _secret_volume(stat: os.stat_result) -> bool:
    """A read-only Kubernetes Secret file shared with the pod's ``fsGroup``: owned by root,
    writable by nobody, readable by the owner and our group only (mode 0440 or 0400)."""
    mode = stat.st_mode & 0o777
    return (stat.st_uid == 0 and mode & 0o337 == 0
            and (stat.st_gid == os.getgid() or stat.st_gid in os.getgroups()))


def _read_private(path: Path) -> object:
    try:
        stat = path.stat()
        mode = stat.st_mode
        if mode & 0o077 and not _secret_volume(stat):
            raise KeyringError(f"{path} is readable by others (mode {mode & 0o777:o}); chmod 600")
        return serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise KeyringError(f"cannot load private key {path}: {exc}") from exc


def _read_public(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise KeyringError(f"cannot load public key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyringError(f"{path} is not an Ed25519 public key")
    return key


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
