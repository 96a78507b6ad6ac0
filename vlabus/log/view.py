"""Human and tool views of a log: ``vlabus log cat`` (JSON lines) and ``vlabus log export``
(a JSON-encoded MCAP with a JSON Schema per kind, which Foxglove opens).

Arrays are summarised (dtype, shape, min, max), never dumped; the export also carries the values
of small arrays (states, action chunks) so they can be plotted. Raw byte fields (image pixels,
model chunks) become their length.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from mcap.writer import CompressionType, Writer

from schemas.arrays import NDArray, unpack_array
from schemas.errors import SchemaError, WireError
from schemas.messages import KINDS
from security.keys import Keyring
from security.seal import Opener
from vlabus.envelope import MAGIC, Header
from vlabus.log.formats import DECISION_SCHEMA
from vlabus.log.reader import LogRecord, iter_log
from vlabus.wire import Decoder

#: Arrays up to this many elements carry their values in an export.
MAX_EXPORT_VALUES = 4096
#: Kind shown for recorded bytes that are plain MessagePack, not envelopes (unsigned).
PLAIN_KIND = "plain"
#: Kind shown for the edge black box's decision records (their own channel format).
DECISION_KIND = "decision"
MAX_PLAIN = 1 << 20


def plain_msgpack(data: bytes) -> dict[str, Any] | None:
    """A plain MessagePack map (not an envelope), or None; msgspec never executes input."""
    if len(data) > MAX_PLAIN:
        return None
    try:
        value = msgspec.msgpack.decode(data)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


def to_plain(value: Any, *, values: bool = False) -> Any:
    """JSON-ready view of a decoded message: arrays summarised, bytes as their length."""
    if isinstance(value, NDArray):
        return _array(value, values=values)
    if isinstance(value, msgspec.Struct):
        return {name: to_plain(getattr(value, name), values=values)
                for name in value.__struct_fields__
                if getattr(value, name) is not msgspec.UNSET}  # a field left out on the wire
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value)
    if isinstance(value, dict):
        return {str(k): to_plain(v, values=values) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v, values=values) for v in value]
    return value


def _array(packed: NDArray, *, values: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"dtype": packed.dtype, "shape": list(packed.shape),
                           "min": None, "max": None}
    try:
        array = unpack_array(packed)
    except SchemaError as exc:
        out["error"] = str(exc)
        return out
    if array.size and np.issubdtype(array.dtype, np.number):
        out["min"], out["max"] = float(array.min()), float(array.max())
    if values and array.size <= MAX_EXPORT_VALUES:
        out["values"] = array.astype(np.float64).ravel().tolist()
    return out


class Viewer:
    """Decodes records for display: verified with a keyring, else only parsed."""

    def __init__(self, keyring: Keyring | None = None, opener: Opener | None = None) -> None:
        self._decoder = Decoder(keyring or Keyring(), opener=opener)
        self._verify = keyring is not None

    def view(self, record: LogRecord, *, values: bool = False) -> dict[str, Any]:
        doc: dict[str, Any] = {"topic": record.topic, "log_ns": record.log_ns,
                               "publish_ns": record.publish_ns, "bytes": len(record.data)}
        if record.format == "decision":  # the black box's own records: unsigned MessagePack
            plain = plain_msgpack(record.data)
            if plain is None:
                doc["verified"] = False if self._verify else None
                doc["error"] = {"reason": "malformed", "detail": "not a MessagePack map"}
                return doc
            doc["verified"] = None
            doc["kind"] = DECISION_KIND
            doc["message"] = to_plain(plain, values=values)
            return doc
        try:
            if self._verify:
                received = self._decoder.decode(record.data)
                header, message = received.header, received.message
                doc["verified"] = True
            else:
                header, message = self._decoder.parse_unverified(record.data)
                doc["verified"] = None
        except WireError as exc:
            legacy = record.format == "legacy" and not record.data.startswith(MAGIC)
            plain = plain_msgpack(record.data) if legacy else None
            if plain is not None:  # an older recording's decision records, labelled envelopes
                doc["verified"] = None
                doc["kind"] = PLAIN_KIND
                doc["message"] = to_plain(plain, values=values)
                return doc
            doc["verified"] = False if self._verify else None
            doc["error"] = {"reason": exc.reason.value, "detail": str(exc)}
            return doc
        doc["kind"] = header.kind
        doc["header"] = to_plain(header)
        doc["message"] = to_plain(message, values=values)
        return doc


def cat(path: str | Path, *, topics: Iterable[str] | None = None,
        keyring: Keyring | None = None, opener: Opener | None = None) -> Iterator[dict[str, Any]]:
    """``vlabus log cat``: one JSON-ready document per message, in log order."""
    viewer = Viewer(keyring, opener)
    for record in iter_log(path, topics=topics):
        yield viewer.view(record)


def kind_schema(kind: str) -> dict[str, Any]:
    """JSON Schema of an exported message of ``kind`` ({"header", "message"})."""
    (header_ref, body_ref), defs = msgspec.json.schema_components(
        [Header, KINDS[kind]], ref_template="#/$defs/{name}")
    for definition in defs.values():
        _bytes_as_length(definition)
    defs["NDArray"] = {
        "type": "object", "title": "NDArray",
        "properties": {"dtype": {"type": "string"},
                       "shape": {"type": "array", "items": {"type": "integer"}},
                       "min": {"type": ["number", "null"]}, "max": {"type": ["number", "null"]},
                       "values": {"type": "array", "items": {"type": "number"}}},
        "required": ["dtype", "shape", "min", "max"],
    }
    return {"title": f"vlabus.{kind}", "type": "object",
            "properties": {"header": header_ref, "message": body_ref},
            "required": ["header", "message"], "$defs": defs}


PLAIN_SCHEMA: dict[str, Any] = {
    "title": f"vlabus.{PLAIN_KIND}", "type": "object",
    "description": "an unsigned MessagePack map recorded as is (e.g. edge decisions)",
    "properties": {"header": {"type": "object", "maxProperties": 0},
                   "message": {"type": "object"}},
    "required": ["header", "message"],
}


def decision_export_schema() -> dict[str, Any]:
    """JSON Schema of an exported decision record ({"header": {}, "message": decision})."""
    return {"title": f"vlabus.{DECISION_KIND}", "type": "object",
            "properties": {"header": {"type": "object", "maxProperties": 0},
                           "message": DECISION_SCHEMA},
            "required": ["header", "message"]}


def _bytes_as_length(node: Any) -> None:
    if isinstance(node, dict):
        for key, child in node.items():
            if isinstance(child, dict) and child.get("contentEncoding") == "base64":
                node[key] = {"type": "integer", "minimum": 0, "description": "byte count"}
            else:
                _bytes_as_length(child)
    elif isinstance(node, list):
        for child in node:
            _bytes_as_length(child)


def export(source: str | Path, target: str | Path, *, topics: Iterable[str] | None = None,
           keyring: Keyring | None = None, opener: Opener | None = None) -> dict[str, int]:
    """Write ``target`` as an MCAP with ``message_encoding`` json and a ``jsonschema`` per kind.

    Messages that do not decode (or verify, with a keyring) are skipped and counted."""
    viewer = Viewer(keyring, opener)
    counts = {"messages": 0, "skipped": 0}
    with open(target, "wb") as stream:
        writer = Writer(stream, chunk_size=1 << 20, compression=CompressionType.NONE)
        writer.start(profile="", library="vlabus export")
        schemas: dict[str, int] = {}
        channels: dict[tuple[str, str], int] = {}
        for record in iter_log(source, topics=topics):
            doc = viewer.view(record, values=True)
            if "error" in doc:
                counts["skipped"] += 1
                continue
            kind = doc["kind"]
            if kind not in schemas:
                schema = (kind_schema(kind) if kind in KINDS else
                          decision_export_schema() if kind == DECISION_KIND else PLAIN_SCHEMA)
                schemas[kind] = writer.register_schema(
                    f"vlabus.{kind}", "jsonschema", json.dumps(schema).encode())
            channel = channels.get((record.topic, kind))
            if channel is None:
                channel = writer.register_channel(record.topic, "json", schemas[kind])
                channels[(record.topic, kind)] = channel
            data = json.dumps({"header": doc.get("header", {}), "message": doc["message"]}).encode()
            writer.add_message(channel, log_time=record.log_ns, data=data,
                               publish_time=record.publish_ns)
            counts["messages"] += 1
        writer.finish()  # type: ignore[no-untyped-call]
    return counts
