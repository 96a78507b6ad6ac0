"""The vlabus exception tree.

Every error the bus raises on purpose derives from :class:`BusError`::

    BusError
    ├── WireError(reason, detail)        a message failed the receive pipeline
    │   ├── MalformedError               reason "malformed"
    │   ├── TooLargeError(limit, size)   reason "too_large"
    │   ├── UnknownKeyError(key_id)      reason "unknown_key"
    │   ├── SignatureError(sender)       reason "bad_signature"
    │   ├── IdentityMismatchError        reason "identity_mismatch"
    │   ├── ReplayError                  reasons "duplicate", "replay", "stale", "future"
    │   ├── DecompressLimitError         reason "decompress_limit"
    │   ├── UnsupportedError             reason "unsupported"
    │   └── SchemaError(path)            reason "schema"
    ├── KeyringError                     missing or unreadable key files
    └── TransportError                   the bus could not carry a message
        ├── PublishRejected(code)        the broker refused a publish (MQTT 5 reason code)
        └── SubscribeRejected(code)      the broker refused a subscription (MQTT 5 reason code)

Third-party errors are translated at the boundary with ``raise ... from exc``.
"""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Why an inbound message was rejected; used as a bounded metrics label."""

    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    IDENTITY_MISMATCH = "identity_mismatch"
    DUPLICATE = "duplicate"
    REPLAY = "replay"
    STALE = "stale"
    FUTURE = "future"
    DECOMPRESS_LIMIT = "decompress_limit"
    UNSUPPORTED = "unsupported"
    SCHEMA = "schema"


class BusError(Exception):
    """Base of every error vlabus raises on purpose."""


class WireError(BusError):
    """A message failed one step of the receive pipeline.

    ``header`` is what the envelope header said when the failure came after it was parsed
    (unverified: fit to attribute a rejection, never to act on), else None."""

    reason: Reason = Reason.MALFORMED
    header: object | None = None

    def __init__(self, detail: str, *, reason: Reason | None = None) -> None:
        super().__init__(detail)
        if reason is not None:
            self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason.value}: {self.detail}"


class MalformedError(WireError):
    reason = Reason.MALFORMED


class TooLargeError(WireError):
    reason = Reason.TOO_LARGE

    def __init__(self, what: str, limit: int, size: int) -> None:
        super().__init__(f"{what} is {size} bytes, limit {limit}")
        self.limit = limit
        self.size = size


class UnknownKeyError(WireError):
    reason = Reason.UNKNOWN_KEY

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no key with id {key_id!r}")
        self.key_id = key_id


class SignatureError(WireError):
    reason = Reason.BAD_SIGNATURE

    def __init__(self, sender: str) -> None:
        super().__init__(f"signature does not verify for sender {sender!r}")
        self.sender = sender


class IdentityMismatchError(WireError):
    reason = Reason.IDENTITY_MISMATCH


class ReplayError(WireError):
    """Reason is one of duplicate, replay, stale or future."""


class DecompressLimitError(WireError):
    reason = Reason.DECOMPRESS_LIMIT


class UnsupportedError(WireError):
    reason = Reason.UNSUPPORTED


class SchemaError(WireError):
    reason = Reason.SCHEMA

    def __init__(self, detail: str, path: str = "") -> None:
        super().__init__(detail)
        self.path = path


class KeyringError(BusError):
    """A key file is missing, unreadable or of the wrong kind."""


class TransportError(BusError):
    """The bus could not carry a message (not connected, closed, refused)."""


class PublishRejected(TransportError):  # noqa: N818 (public name others use)
    """The broker refused a publish; ``code`` is the MQTT 5 reason code."""

    def __init__(self, topic: str, code: int, name: str = "") -> None:
        super().__init__(f"publish to {topic!r} refused: 0x{code:02x} {name}".rstrip())
        self.topic = topic
        self.code = code


class SubscribeRejected(TransportError):  # noqa: N818 (pairs with PublishRejected)
    """The broker refused a subscription; ``code`` is the MQTT 5 SUBACK reason code."""

    def __init__(self, pattern: str, code: int, name: str = "") -> None:
        super().__init__(f"subscribe to {pattern!r} refused: 0x{code:02x} {name}".rstrip())
        self.pattern = pattern
        self.code = code
