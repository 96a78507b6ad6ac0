"""The hub's frame grammar, the one place it is written: an encoder and a decoder per verb.

Frames on the single DEALER<->ROUTER pair (the hub's ROUTER adds/strips the routing id)::

    client -> hub   HELLO   [b"H", client_id, heartbeat_ms, will_topic, will_payload, retain]
                    SUB     [b"S", pattern, group (, mid)]    group b"" = plain subscription;
                                                              with mid: answered ACK or NACK
                    UNSUB   [b"U", pattern, group]
                    PUB     [b"P" topic [b"\\0" meta], payload]
                            meta: ";"-joined b"r" (retain), b"e<ns>" (expiry), b"q<mid>" (QoS 1)
                    PING    [b"I"]
                    BYE     [b"B"]                            clean close: no will
    hub -> client   MSG     [b"M" topic, payload]
                    ACK     [b"A", mid]                       QoS 1 publish or SUB accepted
                    WELCOME [b"W"]                            answer to HELLO
                    NACK    [b"N", mid, reason]               refused by the hub's access
                                                              rules (mid b"" unless QoS 1
                                                              or a SUB with mid); mid b"" and
                                                              reason TAKEN_OVER...: a newer
                                                              HELLO took this client id;
                                                              FORGOTTEN...: a PING from a
                                                              client the hub does not know
                                                              (silent too long): HELLO again

PUB and MSG carry verb, topic and flags in one frame: every frame costs a send and a receive
call at each end, and these two verbs are the whole hot path. Topics cannot contain NUL (MQTT
forbids it), so NUL separates topic from meta.

Encoders return the list of frames to send; decoders take the received frames (``bytes``, or
anything with ``.bytes`` such as ``zmq.Frame``) and raise ``ValueError`` on a malformed one.
Pure: no sockets, no pyzmq import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.errors import TransportError

HELLO, SUB, UNSUB, PUB, PING, BYE = b"H", b"S", b"U", b"P", b"I", b"B"
MSG, ACK, WELCOME, NACK = b"M", b"A", b"W", b"N"
#: The start of the NACK reason sent to a client whose id a newer connection took over.
TAKEN_OVER = "taken over"
#: The start of the NACK reason answering a PING from a client the hub has forgotten.
FORGOTTEN = "unknown client"


@dataclass(frozen=True, slots=True)
class PubMeta:
    """Per-publish flags carried after the topic in a PUB's first frame."""

    retain: bool = False
    expires_ns: int = 0
    mid: bytes = b""


@dataclass(frozen=True, slots=True)
class Hello:
    """A client's introduction: its id, heartbeat and will (``will_topic`` b"": none)."""

    client_id: str
    heartbeat_ms: int
    will_topic: bytes
    will_payload: bytes
    will_retain: bool


def encode_meta(*, retain: bool, expires_ns: int, mid: bytes) -> bytes:
    """The meta part of a PUB head; b"" when every flag is at its default."""
    parts = []
    if retain:
        parts.append(b"r")
    if expires_ns:
        parts.append(b"e%d" % expires_ns)
    if mid:
        parts.append(b"q" + mid)
    return b";".join(parts)


def decode_meta(meta: bytes) -> PubMeta:
    """Parse a PUB's meta; raises ``ValueError`` on anything malformed."""
    if not meta:
        return PubMeta()
    retain, expires, mid = False, 0, b""
    for part in meta.split(b";"):
        kind, value = part[:1], part[1:]
        if kind == b"r" and not value:
            retain = True
        elif kind == b"e":
            expires = int(value)
        elif kind == b"q" and value:
            mid = value
        else:
            raise ValueError(f"bad meta item {part!r}")
    return PubMeta(retain, expires, mid)


def meta_mid(meta: bytes) -> bytes:
    """The QoS 1 message id in ``meta``, or b"" (also when ``meta`` is malformed)."""
    try:
        return decode_meta(meta).mid
    except ValueError:
        return b""


def pub_head(topic: bytes, meta: bytes = b"") -> bytes:
    """The first frame of a PUB."""
    return PUB + topic + b"\0" + meta if meta else PUB + topic


def pub(topic: bytes, payload: Any, meta: bytes = b"") -> list[Any]:
    """A whole PUB: head and payload (``payload`` may be any buffer or a ``zmq.Frame``)."""
    return [pub_head(topic, meta), payload]


def split_pub_head(head: bytes) -> tuple[bytes, bytes]:
    """(topic, meta) of a PUB head (verb included)."""
    topic, _, meta = head[1:].partition(b"\0")
    return topic, meta


def msg_head(topic: bytes) -> bytes:
    """The first frame of a MSG (hub -> client delivery)."""
    return MSG + topic


def msg(topic: bytes, payload: Any) -> list[Any]:
    """A whole MSG."""
    return [MSG + topic, payload]


def msg_topic(head: bytes) -> bytes:
    """The topic of a MSG head."""
    return head[1:]


def hello(client_id: str, heartbeat_ms: int, will_topic: str = "", will_payload: bytes = b"",
          will_retain: bool = False) -> list[bytes]:
    """HELLO: who the client is, its heartbeat interval and its will (none: empty topic)."""
    return [HELLO, client_id.encode(), b"%d" % heartbeat_ms, will_topic.encode(), will_payload,
            b"1" if will_retain else b"0"]


def decode_hello(frames: list[Any]) -> Hello:
    """The HELLO in ``frames`` (verb first); ``ValueError`` when malformed."""
    if len(frames) != 6:
        raise ValueError(f"HELLO with {len(frames)} frames")
    raw = [_bytes(f) for f in frames[1:]]
    return Hello(raw[0].decode(), int(raw[1]), raw[2], raw[3], raw[4] == b"1")


def sub(pattern: str, group: str = "", mid: bytes = b"") -> list[bytes]:
    """SUB; with ``mid`` the hub answers ACK or NACK."""
    frames = [SUB, pattern.encode(), group.encode()]
    if mid:
        frames.append(mid)
    return frames


def decode_sub(frames: list[Any]) -> tuple[str, str, bytes]:
    """(pattern, group, mid) of a SUB (verb first); ``ValueError`` when malformed."""
    if len(frames) not in (3, 4):
        raise ValueError(f"SUB with {len(frames)} frames")
    mid = _bytes(frames[3]) if len(frames) == 4 else b""
    return _bytes(frames[1]).decode(), _bytes(frames[2]).decode(), mid


def unsub(pattern: str, group: str = "") -> list[bytes]:
    return [UNSUB, pattern.encode(), group.encode()]


def decode_unsub(frames: list[Any]) -> tuple[str, str]:
    """(pattern, group) of an UNSUB (verb first)."""
    if len(frames) != 3:
        raise ValueError(f"UNSUB with {len(frames)} frames")
    return _bytes(frames[1]).decode(), _bytes(frames[2]).decode()


def ping() -> list[bytes]:
    return [PING]


def bye() -> list[bytes]:
    return [BYE]


def welcome() -> list[bytes]:
    return [WELCOME]


def ack(mid: bytes) -> list[bytes]:
    return [ACK, mid]


def nack(mid: bytes, reason: str) -> list[bytes]:
    return [NACK, mid, reason.encode()]


def tcp_endpoint(url: str) -> str:
    """``zmq://HOST:PORT`` (or ``tcp://``) -> ``tcp://HOST:PORT``."""
    if url.startswith("zmq://"):
        return "tcp://" + url[len("zmq://"):]
    if url.startswith("tcp://"):
        return url
    raise TransportError(f"not a zmq:// or tcp:// address: {url!r}")


def _bytes(frame: Any) -> bytes:
    return frame if isinstance(frame, bytes) else bytes(frame.bytes)
