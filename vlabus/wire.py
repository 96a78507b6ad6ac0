"""The envelope: how every message is framed, compressed, signed and checked.

Wire layout (all integers big-endian)::

    0      2      3            5                5+H           N-64      N
    | "VB" | 0x01 | H (uint16) | header (H B)   | body         | sig (64) |

* header — a MessagePack map (``Header``): kind, sender, key id, sequence, sender time,
  absolute deadline, priority, correlation id, body encoding flags, raw body length.
* body — the MessagePack map of the message (``schemas.messages``), lz4-frame compressed when
  ``enc & 1`` (only when compression pays), then sealed to a worker pool's X25519 key when
  ``enc & 2`` (``security.seal``; encrypt, then sign).
* sig — Ed25519 over ``SIGNING_CONTEXT + BLAKE3-256(bytes 0..N-64)``. Version 2 (session
  integrity, :mod:`vlabus.session_wire`) ends in a 32-byte keyed BLAKE3 MAC instead and names
  its session in ``key``. BLAKE3 hashes at memory
  speed (300 KB in ~33 µs here, SHA-256 ~150 µs), so large frames sign and verify in roughly the
  time of one Ed25519 operation on 57 bytes.

:class:`Encoder` and :class:`Decoder` are the only entry points. Decoding runs the cheap steps
first: size cap → header with strict limits → key lookup → identity → signature → replay guard
(checked) → unseal → bounded decompression → typed decode → content (array lengths, image
sizes, JPEG headers) → topic binding → replay guard (recorded). The replay window moves only
for a message that passed every check. Every failure is a :class:`~schemas.errors.WireError`
carrying its reason.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import lz4.frame
import msgspec

from schemas.content import check_content
from schemas.errors import (
    DecompressLimitError,
    IdentityMismatchError,
    MalformedError,
    SchemaError,
    SignatureError,
    TooLargeError,
    UnknownKeyError,
    UnsupportedError,
    WireError,
)
from schemas.messages import KIND_OF, KINDS, Message, Priority
from security.keys import Keyring, Role, Signer
from security.replay import ReplayGuard
from security.seal import OVERHEAD as SEAL_OVERHEAD
from security.seal import Opener, PoolKey, Sealer
from vlabus.envelope import (
    _HEAD_ROOM,
    _MAX_BODY,
    _PREFIX,
    _SKIP_FIRST,
    _SKIP_MAX,
    _UNREADABLE,
    ENC_LZ4,
    ENC_SEAL,
    IDENTITY_FIELD,
    KNOWN_ENC,
    MAGIC,
    PREFIX_SIZE,
    SENDER_ROLES,
    SESSION_VERSION,
    SIGNATURE_SIZE,
    UNTIMED_KINDS,
    VERSION,
    Clock,
    Header,
    Limits,
    Received,
    SessionAuth,
    _header_len,
    _path_of,
    check_topic,
    trailer_size,
)


class Encoder:
    """Frames, compresses and signs messages for one sender; owns its sequence counter.

    The sequence starts at the wall clock in microseconds, so a restarted sender continues above
    its previous session without keeping state on disk; ``start_seq`` fixes the first sequence
    number instead (golden vectors, tests). ``seal_to`` encrypts every body to a worker pool's
    key (a ``PoolKey``, or a ``Sealer`` when the caller manages the ephemeral key).

    Each body is encoded into a fresh buffer with room for the header in front, so an
    uncompressed frame's image bytes are copied once, into the envelope (:meth:`encode_view`);
    :meth:`encode` copies that into ``bytes``.
    Thread-safe: a lock serialises ``encode`` (uncontended, it costs well under a microsecond).
    """

    def __init__(
        self,
        signer: Signer,
        *,
        compress: Literal["auto", "always", "never"] = "auto",
        clock: Clock = time.time_ns,
        start_seq: int | None = None,
        seal_to: PoolKey | Sealer | None = None,
    ) -> None:
        self.signer = signer
        self.compress = compress
        self._clock = clock
        self._seq = clock() // 1000 if start_seq is None else start_seq - 1
        self._sealer = Sealer(seal_to) if isinstance(seal_to, PoolKey) else seal_to
        self._body = msgspec.msgpack.Encoder()
        self._header = msgspec.msgpack.Encoder()
        self._lock = threading.Lock()
        self._skip: dict[str, int] = {}  # per kind: messages left before lz4 is tried again
        self._backoff: dict[str, int] = {}  # per kind: the last skip length

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def encode(
        self,
        message: Message,
        *,
        deadline_ns: int = 0,
        priority: int = Priority.NORMAL,
        corr: str = "",
        sent_ns: int | None = None,
    ) -> bytes:
        """Return the signed envelope bytes for ``message``.

        Raises ``SchemaError`` for a correlation id over 64 characters and ``TooLargeError``
        for a body over the default envelope cap: receivers would refuse either.
        """
        wire = self.encode_view(message, deadline_ns=deadline_ns, priority=priority, corr=corr,
                                sent_ns=sent_ns)
        return wire if isinstance(wire, bytes) else bytes(wire)

    def encode_view(
        self,
        message: Message,
        *,
        deadline_ns: int = 0,
        priority: int = Priority.NORMAL,
        corr: str = "",
        sent_ns: int | None = None,
    ) -> bytes | memoryview:
        """:meth:`encode` without its final copy, for large frames on the hot path.

        An envelope whose body travels as encoded (not compressed, not sealed: raw camera
        frames) is built in place: the body is encoded once into a fresh buffer, behind room
        left for the header, and signed there. The result is then a read-only view of that
        buffer, which belongs to the caller; otherwise it is ``bytes``.
        """
        kind = KIND_OF[type(message)]
        if len(corr) > 64:
            raise SchemaError(f"correlation id of {len(corr)} characters, at most 64", "corr")
        with self._lock:
            return self._encode(kind, message, deadline_ns=deadline_ns, priority=priority,
                                corr=corr, sent_ns=sent_ns)

    def _encode(self, kind: str, message: Message, *, deadline_ns: int, priority: int,
                corr: str, sent_ns: int | None) -> bytes | memoryview:
        out = bytearray(_HEAD_ROOM)
        self._body.encode_into(message, out, _HEAD_ROOM)
        raw_len = len(out) - _HEAD_ROOM
        if raw_len > _MAX_BODY:
            raise TooLargeError("body", _MAX_BODY, raw_len)
        enc = 0
        packed = None
        if self._should_compress(kind, raw_len):
            with memoryview(out) as view:
                packed = lz4.frame.compress(view[_HEAD_ROOM:], store_size=True)
            if len(packed) * 10 < raw_len * 9:  # pays only when it saves at least 10 %
                enc = ENC_LZ4
                self._backoff[kind] = 0
            else:
                packed = None
                if self.compress == "auto":
                    # camera bytes rarely compress: stop trying for a while, longer each time
                    wait = min(max(2 * self._backoff.get(kind, 0), _SKIP_FIRST), _SKIP_MAX)
                    self._backoff[kind] = self._skip[kind] = wait
        if self._sealer is not None:
            enc |= ENC_SEAL
        version, key = self._mode(kind)
        seq = self.next_seq()
        header = self._header.encode(Header(
            kind=kind, sender=self.signer.identity, key=key,
            seq=seq, sent_ns=self._clock() if sent_ns is None else sent_ns,
            deadline_ns=deadline_ns, priority=priority, corr=corr, enc=enc, raw_len=raw_len,
        ))
        prefix = _PREFIX.pack(MAGIC, version, len(header)) + header
        if packed is not None or self._sealer is not None or len(prefix) > _HEAD_ROOM:
            with memoryview(out) as view:
                body: bytes | memoryview = view[_HEAD_ROOM:] if packed is None else packed
                if self._sealer is not None:
                    body = self._sealer.seal(body, prefix)
                return b"".join((prefix, body, self._tag(version, seq, prefix, body)))
        # the common case for frames: sign the buffer where it lies
        start = _HEAD_ROOM - len(prefix)
        out[start:_HEAD_ROOM] = prefix
        with memoryview(out) as view:
            signature = self._tag(version, seq, view[start:])
        out += signature
        return memoryview(out)[start:].toreadonly()

    def _mode(self, kind: str) -> tuple[int, str]:
        """(envelope version, header key) for the next message of ``kind``."""
        return VERSION, self.signer.key_id

    def _tag(self, version: int, seq: int, *parts: bytes | memoryview) -> bytes:
        """The trailer over ``parts``: here always an Ed25519 signature."""
        return self.signer.sign(*parts)

    def _should_compress(self, kind: str, size: int) -> bool:
        if self.compress == "never" or size < 256:
            return False
        if self.compress == "always":
            return True
        left = self._skip.get(kind, 0)
        if left:
            self._skip[kind] = left - 1
            return False
        return True


@dataclass
class Decoder:
    """Checks and decodes envelopes; see the module docstring for the order of the steps.

    ``sender_roles`` may widen who may send a kind (a worker in replay mode adds ``replay`` to
    frames); nothing is ever accepted without a verified signature. ``opener`` holds the pool
    keys that open sealed bodies; without one a sealed body is ``unsupported``.
    """

    keyring: Keyring
    guard: ReplayGuard | None = None
    limits: Limits = field(default_factory=Limits)
    sender_roles: dict[str, frozenset[Role]] = field(default_factory=lambda: dict(SENDER_ROLES))
    opener: Opener | None = None
    #: checks session-mode (version 2) envelopes; without it they are ``unsupported``
    sessions: SessionAuth | None = None
    _decoders: dict[str, msgspec.msgpack.Decoder[Any]] = field(init=False, repr=False)
    _header: msgspec.msgpack.Decoder[Header] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._decoders = {kind: msgspec.msgpack.Decoder(cls) for kind, cls in KINDS.items()}
        self._header = msgspec.msgpack.Decoder(Header)

    def decode(self, data: bytes | memoryview, *, topic: str | None = None,
               commit: bool = True) -> Received:
        """Return the verified message in ``data`` or raise a ``WireError``; one raised after
        the header was parsed carries it as ``header`` (so nobody parses it twice).

        ``topic``: the topic it arrived on; a message naming another robot than a per-robot
        topic's is refused (``topic_mismatch``). ``commit=False`` leaves the replay window
        alone: the caller runs its own checks, then :meth:`commit`."""
        view = memoryview(data)
        header = self.read_header(view)
        try:
            received = self._verify(view, header, data)
            if topic is not None:
                check_topic(topic, header.kind, received.message)
            if commit:
                self.commit(received)
        except WireError as exc:
            exc.header = header
            raise
        return received

    def commit(self, received: Received) -> None:
        """Record ``received`` in the replay window (raises ``ReplayError`` when another
        message took its sequence meanwhile)."""
        if self.guard is not None:
            self.guard.admit(received.guard_key, received.header.seq, received.tag)

    def _verify(self, view: memoryview, header: Header, data: bytes | memoryview) -> Received:
        size = len(view)
        trailer = trailer_size(view)
        if trailer != SIGNATURE_SIZE:
            if self.sessions is None:
                raise UnsupportedError("session-mode envelope, and this decoder holds no sessions")
            role, identity, guard_key, tag = self.sessions.authenticate(header, view)
            if role not in self.sender_roles.get(header.kind, ()):
                raise IdentityMismatchError(f"a {role} session may not send {header.kind!r}")
        else:
            role, identity, guard_key, tag = self._check_signature(header, view)
        if self.guard is not None:  # checked here, cheap; recorded once every check passed
            self.guard.check(guard_key, header.seq, tag,
                             sent_ns=None if header.kind in UNTIMED_KINDS else header.sent_ns)
        body_at = PREFIX_SIZE + _header_len(view)
        body = self._open_body(header, view[body_at: size - trailer], view[:body_at])
        message = self._decode_body(header.kind, body)
        ident = IDENTITY_FIELD.get(header.kind)
        if ident is not None and role != "replay" and getattr(message, ident) != identity:
            raise IdentityMismatchError(
                f"{ident}={getattr(message, ident)!r} but signed by {identity!r}")
        check_content(message)
        return Received(header, message, data, role, guard_key, tag)

    def _check_signature(self, header: Header, view: memoryview) -> tuple[Role, str, str, bytes]:
        size = len(view)
        key = self.keyring.get(header.key)
        if key is None:
            raise UnknownKeyError(header.key, header.sender)
        if key.identity != header.sender:
            raise IdentityMismatchError(
                f"key {header.key} belongs to {key.identity!r}, header says {header.sender!r}")
        if key.role not in self.sender_roles.get(header.kind, ()):
            raise IdentityMismatchError(f"a {key.role} key may not send {header.kind!r}")
        if not key.verify(view[size - SIGNATURE_SIZE:], view[: size - SIGNATURE_SIZE]):
            raise SignatureError(header.sender)
        return key.role, key.identity, header.key, bytes(view[size - SIGNATURE_SIZE:])

    def read_header(self, view: memoryview) -> Header:
        """Size cap and strict header parse only (no key, no signature)."""
        size = len(view)
        if size > self.limits.max_envelope:
            raise TooLargeError("envelope", self.limits.max_envelope, size)
        if size < PREFIX_SIZE + SIGNATURE_SIZE:
            raise MalformedError(f"{size} bytes is shorter than any envelope")
        magic, version, header_len = _PREFIX.unpack_from(view)
        if magic != MAGIC:
            raise MalformedError(f"bad magic {bytes(magic)!r}")
        if version not in (VERSION, SESSION_VERSION):
            raise UnsupportedError(f"envelope version {version}, this build reads "
                                   f"{VERSION} and {SESSION_VERSION}")
        if header_len > self.limits.max_header:
            raise TooLargeError("header", self.limits.max_header, header_len)
        if PREFIX_SIZE + header_len + trailer_size(view) > size:
            raise MalformedError(f"header length {header_len} runs past the end ({size} bytes)")
        try:
            header = self._header.decode(view[PREFIX_SIZE: PREFIX_SIZE + header_len])
        except _UNREADABLE as exc:  # ValidationError is a DecodeError
            raise MalformedError(f"bad header: {exc!r}") from exc
        if header.kind not in KINDS:
            raise UnsupportedError(f"unknown kind {header.kind!r}")
        if header.enc & ~KNOWN_ENC:
            raise UnsupportedError(f"unknown body encoding flags 0x{header.enc:02x}")
        return header

    def parse_unverified(self, data: bytes | memoryview) -> tuple[Header, Message]:
        """Header, bounded decompression and typed decode with NO key, signature or replay
        check: for offline tools reading a local log without its keyring (``vlabus log cat``).
        Never use it on a receive path."""
        view = memoryview(data)
        header = self.read_header(view)
        body_at = PREFIX_SIZE + _header_len(view)
        body = self._open_body(header, view[body_at: len(view) - trailer_size(view)],
                               view[:body_at])
        return header, self._decode_body(header.kind, body)

    def _decode_body(self, kind: str, body: memoryview | bytes) -> Message:
        try:
            message: Message = self._decoders[kind].decode(body)
        except msgspec.ValidationError as exc:
            raise SchemaError(str(exc), _path_of(exc)) from exc
        except _UNREADABLE as exc:
            raise SchemaError(f"body is not readable MessagePack: {exc!r}", "$") from exc
        return message

    def _open_body(
        self, header: Header, body: memoryview | bytes, aad: memoryview
    ) -> memoryview | bytes:
        cap = self.limits.max_body
        if header.enc & ENC_SEAL:
            if self.opener is None:
                raise UnsupportedError("sealed body, and this decoder holds no pool key")
            if not header.enc & ENC_LZ4 and len(body) - SEAL_OVERHEAD != header.raw_len:
                raise MalformedError(
                    f"sealed body holds {len(body) - SEAL_OVERHEAD} bytes, header says "
                    f"{header.raw_len}")
            body = self.opener.open(body, aad)
        if not header.enc & ENC_LZ4:
            if len(body) != header.raw_len:
                raise MalformedError(f"body is {len(body)} bytes, header says {header.raw_len}")
            return body
        if header.raw_len > cap:
            raise DecompressLimitError(f"declared body of {header.raw_len} bytes exceeds {cap}")
        try:
            info = lz4.frame.get_frame_info(body)
        except RuntimeError as exc:
            raise MalformedError(f"bad lz4 frame: {exc}") from exc
        if info["content_size"] != header.raw_len:
            raise DecompressLimitError(
                f"lz4 frame declares {info['content_size']} bytes, header {header.raw_len}")
        decompressor = lz4.frame.LZ4FrameDecompressor()
        try:
            out: bytes = decompressor.decompress(body, max_length=header.raw_len)
        except RuntimeError as exc:
            raise MalformedError(f"lz4 body does not decompress: {exc}") from exc
        if len(out) != header.raw_len or not decompressor.eof:
            raise DecompressLimitError(
                f"lz4 body yields more or less than the declared {header.raw_len} bytes")
        return out
