"""Reading vlabus MCAP logs: ordered iteration, a summary, and recovery of truncated files.

* :func:`iter_log` yields :class:`LogRecord` in log-time order, ties by file position (the
  upstream indexed reader's order), so a replay of the same file is always the same sequence.
  It needs a complete file (summary and indexes); a file cut short by a crash goes through
  :func:`recover` first.
* :func:`recover` reads a file front to back with the non-seeking, non-time-ordered reader and
  keeps every complete chunk (known trap 10); the chunk being written at the crash is
  lost. It writes a new valid file with the same channels, times and bytes.
* :func:`summarize` is ``vlabus log info``: topics, counts, time range, senders, sizes.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap.records import Channel, Chunk, Metadata, Schema
from mcap.records import Message as McapMessage
from mcap.stream_reader import StreamReader, breakup_chunk
from mcap.writer import CompressionType, Writer

from schemas.errors import BusError, WireError
from schemas.topics import matches
from security.keys import Keyring
from vlabus.log.formats import format_of
from vlabus.log.record import PROFILE
from vlabus.wire import Decoder


class LogError(BusError):
    """A log file cannot be read (missing, not MCAP, or truncated without recovery)."""


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One recorded message: the exact bytes received on ``topic``."""

    topic: str
    data: bytes
    log_ns: int
    publish_ns: int
    position: int  # index in iteration order; ties in log time keep file order
    #: the channel's format (:func:`vlabus.log.formats.format_of`): envelope, decision, ...
    format: str = "envelope"


def topic_filter(patterns: Iterable[str] | None) -> list[str] | None:
    """Normalise ``--topics`` patterns (MQTT wildcards); ``None`` or empty means all."""
    kept = [p for p in (patterns or ()) if p]
    return kept or None


def wanted(topic: str, patterns: list[str] | None) -> bool:
    return patterns is None or any(matches(p, topic) for p in patterns)


def iter_log(path: str | Path, *, topics: Iterable[str] | None = None,
             start_ns: int | None = None) -> Iterator[LogRecord]:
    """Messages of a complete log in deterministic order, filtered by topic patterns and
    ``log_ns >= start_ns``."""
    patterns = topic_filter(topics)
    try:
        with open(path, "rb") as stream:
            reader = make_reader(stream)
            channels = _channels_of(reader)
            selected = [c.topic for c in channels.values() if wanted(c.topic, patterns)]
            if not selected:
                return
            ordered = reader.iter_messages(topics=selected, starting_at=start_ns,
                                           log_time_order=True)
            formats = {c.id: format_of(c.message_encoding, c.metadata) for c in channels.values()}
            for position, (_schema, channel, message) in enumerate(ordered):
                yield LogRecord(channel.topic, bytes(message.data), message.log_time,
                                message.publish_time, position, formats[channel.id])
    except FileNotFoundError as exc:
        raise LogError(f"{path}: no such file") from exc
    except (McapError, struct.error, EOFError, ValueError) as exc:
        raise LogError(f"{path} is not a complete MCAP file ({exc!r}); "
                       f"try `vlabus log recover {path} OUT.mcap`") from exc


def time_range(path: str | Path) -> tuple[int, int, int]:
    """(first log ns, last log ns, message count) from the file's statistics."""
    try:
        with open(path, "rb") as stream:
            summary = make_reader(stream).get_summary()
    except FileNotFoundError as exc:
        raise LogError(f"{path}: no such file") from exc
    except (McapError, struct.error, EOFError, ValueError, OSError) as exc:
        raise LogError(f"cannot read {path}: {exc!r}") from exc
    if summary is None or summary.statistics is None:
        raise LogError(f"{path} has no summary; try `vlabus log recover`")
    stats = summary.statistics
    return stats.message_start_time, stats.message_end_time, stats.message_count


def _channels_of(reader: Any) -> dict[int, Channel]:
    summary = reader.get_summary()
    if summary is None:
        raise LogError("the file has no summary section (was the recorder killed?)")
    channels: dict[int, Channel] = summary.channels
    return channels


@dataclass
class TopicStats:
    messages: int = 0
    bytes: int = 0
    max_bytes: int = 0
    kinds: Counter[str] = field(default_factory=Counter)


def summarize(path: str | Path) -> dict[str, Any]:
    """``vlabus log info``: per-topic counts and sizes, senders, kinds and the time range."""
    headers = Decoder(Keyring())
    topics: dict[str, TopicStats] = {}
    senders: Counter[str] = Counter()
    not_envelope = 0
    first = last = None
    for record in iter_log(path):
        stats = topics.setdefault(record.topic, TopicStats())
        stats.messages += 1
        stats.bytes += len(record.data)
        stats.max_bytes = max(stats.max_bytes, len(record.data))
        first = record.log_ns if first is None else first
        last = record.log_ns
        if record.format == "decision":  # the black box's own records, not bus traffic
            stats.kinds["decision"] += 1
            continue
        try:
            header = headers.read_header(memoryview(record.data))
        except WireError:
            not_envelope += 1
            stats.kinds["(not an envelope)"] += 1
            continue
        senders[header.sender] += 1
        stats.kinds[header.kind] += 1
    total = sum(s.messages for s in topics.values())
    return {
        "file": str(path),
        "file_bytes": Path(path).stat().st_size,
        "messages": total,
        "payload_bytes": sum(s.bytes for s in topics.values()),
        "start_ns": first,
        "end_ns": last,
        "duration_s": (last - first) / 1e9 if first is not None and last is not None else 0.0,
        "not_envelope": not_envelope,
        "senders": dict(sorted(senders.items())),
        "topics": {t: {"messages": s.messages, "bytes": s.bytes, "max_bytes": s.max_bytes,
                       "kinds": dict(s.kinds)} for t, s in sorted(topics.items())},
    }


@dataclass
class Recovery:
    """What :func:`recover` kept and why it stopped."""

    messages: int = 0
    chunks: int = 0
    channels: int = 0
    complete: bool = False  # the source ended with a footer: nothing was lost
    stopped_by: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"messages": self.messages, "chunks": self.chunks, "channels": self.channels,
                "complete": self.complete, "stopped_by": self.stopped_by}


def recover(source: str | Path, target: str | Path) -> Recovery:
    """Copy every message of every complete chunk (and unchunked message) of ``source`` into a
    new valid MCAP at ``target``; stop quietly at the first truncated or corrupt record."""
    if Path(source).resolve() == Path(target).resolve():
        raise LogError("recover writes a new file; give a different output path")
    with open(source, "rb") as src, open(target, "wb") as dst:
        copier = _Copier(Writer(dst, chunk_size=64 << 10, compression=CompressionType.NONE))
        reader = StreamReader(src, emit_chunks=True, validate_crcs=True)
        try:
            for record in reader.records:
                # A chunk is all-or-nothing: take its records only once all of them parse.
                inner = breakup_chunk(record, validate_crc=True) if isinstance(record, Chunk) \
                    else [record]
                for item in inner:
                    copier.copy(item)
                if isinstance(record, Chunk):
                    copier.result.chunks += 1
            copier.result.complete = True
        except (McapError, struct.error, EOFError, ValueError, KeyError) as exc:
            copier.result.stopped_by = repr(exc)
        copier.writer.finish()  # type: ignore[no-untyped-call]
    copier.result.channels = len(copier.channel_ids)
    return copier.result


class _Copier:
    """Re-registers schemas and channels in the new file as their first message needs them."""

    def __init__(self, writer: Writer) -> None:
        self.writer = writer
        self.result = Recovery()
        self.channels: dict[int, Channel] = {}
        self.channel_ids: dict[int, int] = {}
        self.schema_ids: dict[int, int] = {}
        writer.start(profile=PROFILE, library="vlabus recover")

    def copy(self, item: object) -> None:
        if isinstance(item, Schema) and item.id not in self.schema_ids:
            self.schema_ids[item.id] = self.writer.register_schema(
                item.name, item.encoding, item.data)
        elif isinstance(item, Channel) and item.id not in self.channels:
            self.channels[item.id] = item
        elif isinstance(item, Metadata):
            self.writer.add_metadata(item.name, item.metadata)
        elif isinstance(item, McapMessage):
            target = self.channel_ids.get(item.channel_id)
            if target is None:
                channel = self.channels[item.channel_id]  # KeyError: message before its channel
                target = self.writer.register_channel(
                    channel.topic, channel.message_encoding,
                    self.schema_ids.get(channel.schema_id, 0), channel.metadata)
                self.channel_ids[item.channel_id] = target
            self.writer.add_message(target, log_time=item.log_time, data=item.data,
                                    publish_time=item.publish_time, sequence=item.sequence)
            self.result.messages += 1
