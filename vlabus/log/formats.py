"""What each MCAP channel of a vlabus recording holds, told by its metadata (docs/mcap.md).

Three channel formats, each with the message encoding, schema and ``vlabus.format`` metadata
that match its bytes:

* **envelope** — signed vlabus envelopes, verbatim: ``message_encoding``
  ``vlabus-envelope-v1`` (not MessagePack: the bytes start with ``"VB"``, a version and a
  header length, and end with a 64-byte signature) and the schema ``vlabus.Envelope``
  (``jsonschema``) describing the decoded envelope: prefix, header map, body by kind,
  signature. The decoding steps are in its ``description`` and in docs/mcap.md.
* **decision** — the edge black box's per-step decision records: plain MessagePack maps,
  ``message_encoding`` ``msgpack`` with the JSON Schema ``vlabus.Decision``.
* **unparsed** — bytes seen on the bus that are not an envelope (kept for replay):
  ``message_encoding`` ``vlabus-unparsed``, no schema.

Recordings made before these labels existed say ``msgpack`` with ``vlabus.format``
``envelope-v1`` on every channel; :func:`format_of` reads them as envelope channels whose
messages may also be decision records (told apart by the envelope magic).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import msgspec

from schemas.messages import KINDS
from vlabus.envelope import MAGIC, PREFIX_SIZE, SIGNATURE_SIZE, VERSION, Header

FORMAT_KEY = "vlabus.format"
ENVELOPE_ENCODING = "vlabus-envelope-v1"
UNPARSED_ENCODING = "vlabus-unparsed"
#: What recordings said before the labels were fixed (every channel, decisions included).
LEGACY_ENCODING = "msgpack"
LEGACY_FORMAT = "envelope-v1"

ENVELOPE_STEPS = (
    f"1. bytes 0-1 are {MAGIC!r}, byte 2 the version ({VERSION}), bytes 3-4 the header length H "
    "(uint16 big-endian). "
    f"2. bytes {PREFIX_SIZE}..{PREFIX_SIZE}+H are the header, a MessagePack map (Header). "
    f"3. the last {SIGNATURE_SIZE} bytes are an Ed25519 signature over "
    "b'vlabus/v1 ed25519-blake3\\x00' + BLAKE3-256(every byte before it), made by the key "
    "whose id is header.key. "
    "4. the bytes between header and signature are the body: if header.enc & 2 it is sealed "
    "to a worker pool (open it first); if header.enc & 1 it is an LZ4 frame of header.raw_len "
    "bytes; what remains is a MessagePack map of type KINDS[header.kind]."
)


@dataclass(frozen=True, slots=True)
class ChannelFormat:
    """How one kind of recorded payload is labelled in MCAP."""

    name: str  # the vlabus.format metadata value
    message_encoding: str
    schema_name: str = ""
    schema_encoding: str = ""
    schema: bytes = b""

    @property
    def metadata(self) -> dict[str, str]:
        return {FORMAT_KEY: self.name}


def envelope_schema() -> dict[str, Any]:
    """JSON Schema of a decoded envelope: ``{"prefix", "header", "body", "signature"}``."""
    (header_ref, *body_refs), defs = msgspec.json.schema_components(
        [Header, *KINDS.values()], ref_template="#/$defs/{name}")
    bodies = dict(zip(KINDS, body_refs, strict=True))
    return {
        "title": "vlabus.Envelope",
        "description": "A signed vlabus envelope (docs/mcap.md). Decode: " + ENVELOPE_STEPS,
        "type": "object",
        "properties": {
            "prefix": {"type": "object", "properties": {
                "magic": {"const": MAGIC.decode()}, "version": {"const": VERSION},
                "header_length": {"type": "integer", "minimum": 0, "maximum": 65535}}},
            "header": header_ref,
            "body": {"description": "MessagePack map; its type is the header's kind",
                     "oneOf": list(bodies.values())},
            "signature": {"type": "string", "contentEncoding": "base64",
                          "description": f"{SIGNATURE_SIZE}-byte Ed25519 signature"},
        },
        "required": ["prefix", "header", "body", "signature"],
        "x-vlabus-body-by-kind": bodies,
        "$defs": defs,
    }


DECISION_SCHEMA: dict[str, Any] = {
    "title": "vlabus.Decision",
    "description": "One control step of a robot: where its action came from (edge black box).",
    "type": "object",
    "properties": {
        "step": {"type": "integer", "minimum": 0},
        "source": {"enum": ["cloud", "fallback"]},
        "cause": {"enum": [None, "timeout", "disconnected", "breaker_open", "rejected_reply",
                           "declined", "safety_critical"]},
        "lateness_ns": {"type": "integer", "minimum": 0},
        "rtt_ns": {"type": ["integer", "null"], "minimum": 0},
        "worker_id": {"type": ["string", "null"]},
        "model_version": {"type": "integer", "minimum": 0},
        "codec": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
        "action": {"type": ["array", "null"], "items": {"type": "number"}},
    },
    "required": ["step", "source"],
}

ENVELOPE = ChannelFormat("envelope", ENVELOPE_ENCODING, "vlabus.Envelope", "jsonschema",
                         json.dumps(envelope_schema()).encode())
DECISION = ChannelFormat("decision", "msgpack", "vlabus.Decision", "jsonschema",
                         json.dumps(DECISION_SCHEMA).encode())
UNPARSED = ChannelFormat("unparsed", UNPARSED_ENCODING)
FORMATS = {f.name: f for f in (ENVELOPE, DECISION, UNPARSED)}


def format_of(message_encoding: str, metadata: dict[str, str]) -> str:
    """``envelope``, ``decision``, ``unparsed``, ``legacy`` (an older recording's channel:
    envelopes, or decision records for bytes without the envelope magic) or ``foreign``."""
    name = metadata.get(FORMAT_KEY, "")
    if message_encoding == LEGACY_ENCODING and name == LEGACY_FORMAT:
        return "legacy"
    known = FORMATS.get(name)
    if known is not None and known.message_encoding == message_encoding:
        return name
    return "foreign"
