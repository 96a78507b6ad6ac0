"""The vlabus exception tree.

Every error the bus raises on purpose derives from :class:`BusError`::

    BusError
    ├── WireError(reason, detail)        a message failed the receive pipeline
    │   ├── MalformedError               reason "malformed"
    │   ├── TooLargeError(limit, size)   reason "too_large"
    │   ├── UnknownKeyError(key_id)      reason "unknown_key"
    │   ├── SignatureError(sender)       reason "bad_signature"
    │   ├── IdentityMismatchError        reason "identity_mismatch"
    │   ├── TopicMismatchError           reason "topic_mismatch"
    │   ├── ReplayError                  reasons "duplicate", "replay", "stale", "future"
    │   ├── DecompressLimitError         reason "decompress_limit"
    │   ├── UnsupportedError             reason "unsupported"
    │   ├── SchemaError(path)            reason "schema"
    │   ├── SessionError(session)        reasons "unknown_session", "expired_session"
    │   └── MacError(session)            reason "bad_mac"
    ├── KeyringError                     missing or unreadable key files
    └── TransportError                   the bus could not carry a message
        ├── ConnectRefused(url, code)    the broker answered the connection with a refusal
        ├── BusUnavailable(url)          nothing answered within --connect-timeout
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
    TOPIC_MISMATCH = "topic_mismatch"
    DUPLICATE = "duplicate"
    REPLAY = "replay"
    STALE = "stale"
    FUTURE = "future"
    DECOMPRESS_LIMIT = "decompress_limit"
    UNSUPPORTED = "unsupported"
    SCHEMA = "schema"
    UNKNOWN_SESSION = "unknown_session"
    EXPIRED_SESSION = "expired_session"
    BAD_MAC = "bad_mac"


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
    """No trusted key has this id; ``sender`` is the id the header claims (unverified)."""

    reason = Reason.UNKNOWN_KEY

    def __init__(self, key_id: str, sender: str = "") -> None:
        claimed = f" (sender says {sender!r})" if sender else ""
        super().__init__(f"no key with id {key_id!r}{claimed}")
        self.key_id = key_id
        self.sender = sender


class SignatureError(WireError):
    reason = Reason.BAD_SIGNATURE

    def __init__(self, sender: str) -> None:
        super().__init__(f"signature does not verify for sender {sender!r}")
        self.sender = sender


class IdentityMismatchError(WireError):
    reason = Reason.IDENTITY_MISMATCH


class TopicMismatchError(WireError):
    """A message names another robot than the topic it arrived on (robot A's frame on robot
    B's topic): the topic would lie about who sent it."""

    reason = Reason.TOPIC_MISMATCH


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


class SessionError(WireError):
    """No session key for ``session`` here (``unknown_session``) or it ran out by time or
    message count (``expired_session``); the receiver asks the sender for a new handshake."""

    reason = Reason.UNKNOWN_SESSION

    def __init__(self, session: str, detail: str, *, reason: Reason | None = None) -> None:
        super().__init__(f"session {session}: {detail}", reason=reason)
        self.session = session


class MacError(WireError):
    """The keyed MAC does not match under the session the header names."""

    reason = Reason.BAD_MAC

    def __init__(self, session: str, sender: str) -> None:
        super().__init__(f"MAC does not verify under session {session} (sender {sender!r})")
        self.session = session
        self.sender = sender


class KeyringError(BusError):
    """A key file is missing, unreadable or of the wrong kind."""


class TransportError(BusError):
    """The bus could not carry a message (not connected, closed, refused)."""


#: MQTT 5 reason codes a client meets, by name, with what to do about each.
MQTT_REASONS: dict[int, tuple[str, str]] = {
    0x80: ("Unspecified error", "see the broker's log"),
    0x81: ("Malformed Packet", "client and broker disagree on the protocol; use MQTT 5"),
    0x82: ("Protocol Error", "client and broker disagree on the protocol; use MQTT 5"),
    0x84: ("Unsupported Protocol Version", "the broker needs MQTT 5 (Mosquitto 2.x)"),
    0x85: ("Client Identifier not valid", "pass another --client-id"),
    0x86: ("Bad User Name or Password", "check --broker-config, --username/--password-file, "
           "and that `vlabus broker render` ran for this keyring"),
    0x87: ("Not authorized", "check --broker-config or the credentials, and that this "
           "identity's role may do this (broker_config/acl.json; `vlabus broker sync`)"),
    0x88: ("Server unavailable", "the broker is starting or overloaded; it is retried"),
    0x89: ("Server busy", "the broker is overloaded; it is retried"),
    0x8A: ("Banned", "the broker's administrator banned this client"),
    0x8C: ("Bad authentication method", "the broker expects another authentication; "
           "check --broker-config"),
    0x8F: ("Topic Filter invalid", "check --topics"),
    0x90: ("Topic Name invalid", "check the topic"),
    0x95: ("Packet too large", "the message is over the broker's max_packet_size"),
    0x97: ("Quota exceeded", "the broker limits this client"),
    0x9F: ("Connection rate exceeded", "the broker limits connection attempts; it is retried"),
}


def _hint(code: int) -> str:
    """`` (what to do)`` for a reason code vlabus knows, else nothing."""
    known = MQTT_REASONS.get(code)
    return f" ({known[1]})" if known and code >= 0x80 else ""


def mqtt_reason(code: int) -> str:
    """``0x87 Not authorized (check --broker-config or the credentials, …)``."""
    name, hint = MQTT_REASONS.get(code, ("reason code", "see the MQTT 5 specification, 3.2.2.2"))
    return f"0x{code:02x} {name} ({hint})"


class ConnectRefused(TransportError):  # noqa: N818 (says what happened, like the others)
    """The broker answered CONNECT with a refusal; ``code`` is the MQTT 5 reason code.
    Retrying does not help unless ``retryable`` (the broker was busy or starting)."""

    def __init__(self, url: str, code: int) -> None:
        super().__init__(f"{url} refused the connection: {mqtt_reason(code)}")
        self.url = url
        self.code = code

    @property
    def retryable(self) -> bool:
        return self.code in (0x88, 0x89, 0x9F)


class BusUnavailable(TransportError):  # noqa: N818 (pairs with ConnectRefused)
    """No bus answered at ``url`` within the time the caller allowed (``--connect-timeout``)."""

    def __init__(self, url: str, waited_s: float, last: str) -> None:
        super().__init__(f"no bus at {url} after {waited_s:.1f} s ({last})")
        self.url = url


class PublishRejected(TransportError):  # noqa: N818 (public name others use)
    """The broker refused a publish; ``code`` is the MQTT 5 reason code."""

    def __init__(self, topic: str, code: int, name: str = "") -> None:
        super().__init__(f"publish to {topic!r} refused: 0x{code:02x} {name}".rstrip()
                         + _hint(code))
        self.topic = topic
        self.code = code


class SubscribeRejected(TransportError):  # noqa: N818 (pairs with PublishRejected)
    """The broker refused a subscription; ``code`` is the MQTT 5 SUBACK reason code."""

    def __init__(self, pattern: str, code: int, name: str = "") -> None:
        super().__init__(f"subscribe to {pattern!r} refused: 0x{code:02x} {name}".rstrip()
                         + _hint(code))
        self.pattern = pattern
        self.code = code
