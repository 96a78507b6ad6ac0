"""Write bus traffic to an MCAP file that survives a crash with at most its last second lost.

One MCAP channel per topic and format (:mod:`vlabus.log.formats`): signed envelopes verbatim
on a ``vlabus-envelope-v1`` channel with the ``vlabus.Envelope`` schema, bytes that are not an
envelope on a ``vlabus-unparsed`` channel of the same topic, and records the caller labels
(``channel=DECISION``: the edge black box's MessagePack decisions) on their own. ``log_time``
= receive time (ns, wall clock) and ``publish_time`` = the sender's time from the envelope
header (the receive time when the bytes are not an envelope).

Why small chunks and a timer: an MCAP writer killed mid-run loses the chunk it was building
(known trap 10). :class:`Recorder` closes the chunk and flushes the file at least
every ``flush_interval_s`` (on ``write`` and on :meth:`Recorder.tick`, which a loop calls when
the bus is quiet), and whenever the chunk passes ``chunk_size``.

Chunks are not compressed by default: camera frames are already lz4-compressed or do not
compress, and a second pass costs CPU for nothing. ``compression="zstd"`` or ``"lz4"`` is there
for logs of small messages.

A full disk (any ``OSError`` while writing) stops the recorder: it raises :class:`RecordError`
once, counts ``write_errors``, and every later ``write`` is refused and counted as ``dropped``
without touching the file or raising again. The caller keeps its bus connection.

A recorder is used from one thread (the asyncio loop that receives the messages).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import io
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Literal, NoReturn, Protocol

from mcap.writer import CompressionType, Writer

from schemas.errors import BusError, WireError
from security.keys import Keyring
from vlabus.bus.transport import Message, Transport
from vlabus.log.formats import ENVELOPE, UNPARSED, ChannelFormat
from vlabus.wire import Decoder

log = logging.getLogger(__name__)

MESSAGE_ENCODING = ENVELOPE.message_encoding
PROFILE = "vlabus"

Compression = Literal["none", "zstd", "lz4"]


class RecordError(BusError):
    """The recording cannot continue (e.g. the disk is full); the bus is unaffected."""


class RecordSink(Protocol):
    """What :func:`record_from` writes to: a :class:`Recorder` or a split recording."""

    flush_interval_s: float

    @property
    def messages(self) -> int: ...

    @property
    def bytes(self) -> int: ...

    @property
    def path(self) -> Path: ...

    def write(self, topic: str, payload: builtins.bytes | bytearray | memoryview, received_ns: int,
              sent_ns: int | None = None) -> None: ...

    def tick(self) -> None: ...


class Recorder:
    """Appends messages to a new MCAP file; see the module docstring for the guarantees.

    An existing file at ``path`` is refused (:class:`RecordError`) unless ``overwrite``.

    ``write(topic, payload, received_ns, sent_ns=None)`` records one message; ``tick()`` flushes
    when the interval has passed; ``close()`` writes the summary. Counters: ``messages``,
    ``bytes``, ``not_envelope`` (bus bytes that are no envelope), ``records`` (written with an
    explicit ``channel`` format, e.g. decisions), ``flushes``, ``write_errors``, ``dropped``.
    """

    def __init__(
        self,
        path: str | Path | BinaryIO,
        *,
        flush_interval_s: float = 1.0,
        chunk_size: int = 64 << 10,
        compression: Compression = "none",
        metadata: Mapping[str, str] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        overwrite: bool = False,
    ) -> None:
        self.flush_interval_s = flush_interval_s
        self._monotonic = monotonic
        if isinstance(path, str | Path):
            self.path = Path(path)
            try:
                # "x": an existing recording is never replaced unless asked to
                self._file: BinaryIO = open(self.path, "wb" if overwrite else "xb")  # noqa: SIM115
            except FileExistsError as exc:
                raise RecordError(f"{self.path} exists; pass --overwrite to replace it, or "
                                  "choose another name") from exc
            except OSError as exc:
                raise RecordError(f"cannot open {self.path}: {exc}") from exc
        else:  # a stream the caller opened; closed by close() all the same
            self.path = Path(getattr(path, "name", "<stream>"))
            # Buffer raw streams here, so our flush() reaches them (mcap would buffer privately).
            self._file = io.BufferedWriter(path) if isinstance(path, io.RawIOBase) else path
        self._writer = Writer(
            self._file, chunk_size=chunk_size,
            compression={"none": CompressionType.NONE, "zstd": CompressionType.ZSTD,
                         "lz4": CompressionType.LZ4}[compression],
        )
        self._headers = Decoder(Keyring())  # only read_header is used: no keys needed
        self._channels: dict[tuple[str, str], int] = {}
        self._schemas: dict[str, int] = {}
        self._last_flush = monotonic()
        self._pending = 0
        self._closed = False
        self.error: str | None = None
        self.messages = 0
        self.bytes = 0
        self.not_envelope = 0
        self.records = 0
        self.flushes = 0
        self.write_errors = 0
        self.dropped = 0
        try:
            self._writer.start(profile=PROFILE, library="vlabus")
            self._writer.add_metadata("vlabus", {"started_ns": str(time.time_ns()),
                                                 **(metadata or {})})
            self._file.flush()
        except OSError as exc:
            with contextlib.suppress(OSError):  # closing flushes the same bytes again
                self._file.close()
            raise RecordError(f"cannot start recording to {self.path}: {exc}") from exc

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def topics(self) -> list[str]:
        return list(dict.fromkeys(topic for topic, _ in self._channels))

    def counters(self) -> dict[str, int]:
        return {"messages": self.messages, "bytes": self.bytes, "not_envelope": self.not_envelope,
                "records": self.records,
                "channels": len(self._channels), "flushes": self.flushes,
                "write_errors": self.write_errors, "dropped": self.dropped}

    def write(self, topic: str, payload: bytes | bytearray | memoryview, received_ns: int,
              sent_ns: int | None = None, *, channel: ChannelFormat | None = None) -> None:
        """Record one message: bus bytes (an envelope, or else ``unparsed``) by default, or a
        record of the format ``channel`` names. Raises :class:`RecordError` once when the file
        cannot be written."""
        if self._closed or self.error is not None:
            self.dropped += 1
            return
        data = bytes(payload)
        if channel is None:
            header_ns = self._sender_time(data)
            channel = UNPARSED if header_ns is None else ENVELOPE
            sent_ns = sent_ns if sent_ns is not None else header_ns
        else:
            self.records += 1
        sent_ns = received_ns if sent_ns is None else sent_ns
        try:
            channel_id = self._channel(topic, channel)
            # MCAP's sequence is uint32; ours is the file's message counter (ties: file order).
            self._writer.add_message(channel_id, log_time=received_ns, data=data,
                                     publish_time=sent_ns, sequence=self.messages & 0xFFFFFFFF)
            self.messages += 1
            self.bytes += len(data)
            self._pending += 1
            self.tick()
        except OSError as exc:
            self._fail(exc)

    def tick(self) -> None:
        """Flush when ``flush_interval_s`` has passed since the last flush; call it on a timer."""
        if self._pending and self._monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        """Close the chunk in progress and hand everything to the OS (survives ``kill -9``)."""
        if self._closed or self.error is not None:
            return
        try:
            self._writer.flush()  # type: ignore[no-untyped-call]
        except OSError as exc:
            self._fail(exc)
        self._last_flush = self._monotonic()
        self._pending = 0
        self.flushes += 1

    def close(self) -> None:
        """Write the summary and close the file; after a failure, just close it."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.error is None:
                self._writer.finish()  # type: ignore[no-untyped-call]
                self._file.flush()
        except OSError as exc:
            self.write_errors += 1
            self.error = f"cannot finish {self.path}: {exc}"
            log.error("%s", self.error)  # noqa: TRY400 - expected, no traceback
        finally:
            try:
                self._file.close()
            except OSError as exc:  # the buffered tail could not be written either
                log.error("closing %s: %r", self.path, exc)  # noqa: TRY400

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _channel(self, topic: str, fmt: ChannelFormat) -> int:
        channel_id = self._channels.get((topic, fmt.name))
        if channel_id is None:
            schema_id = self._schemas.get(fmt.name, 0)
            if fmt.schema_name and not schema_id:
                schema_id = self._writer.register_schema(fmt.schema_name, fmt.schema_encoding,
                                                         fmt.schema)
                self._schemas[fmt.name] = schema_id
            channel_id = self._writer.register_channel(topic, fmt.message_encoding, schema_id,
                                                       fmt.metadata)
            self._channels[(topic, fmt.name)] = channel_id
        return channel_id

    def _sender_time(self, data: bytes) -> int | None:
        try:
            return self._headers.read_header(memoryview(data)).sent_ns
        except WireError:
            self.not_envelope += 1
            return None

    def _fail(self, exc: OSError) -> NoReturn:
        self.write_errors += 1
        self.error = f"cannot write {self.path}: {exc}"
        log.error("recording stopped: %s", self.error)
        raise RecordError(self.error) from exc


async def record_from(
    transport: Transport,
    recorder: RecordSink,
    *,
    duration_s: float | None = None,
    stop: asyncio.Event | None = None,
    on_progress: Callable[[RecordSink], None] | None = None,
    progress_interval_s: float = 1.0,
    inspect: Callable[[Message], None] | None = None,
) -> None:
    """Write every message ``transport`` delivers until ``duration_s`` passes, ``stop`` is set
    or the transport closes. Subscribing is the caller's job. Raises :class:`RecordError` when
    the file fails; the transport is left open for the caller to close. ``inspect`` sees each
    message after it is written (e.g. to count signatures that verify)."""
    stop = stop or asyncio.Event()

    async def drain() -> None:
        async for message in transport:
            recorder.write(message.topic, message.payload, message.received_ns)
            if inspect is not None:
                inspect(message)

    async def timer() -> None:
        # Flushes a quiet recording and reports progress; the loop is single-threaded.
        step = min(recorder.flush_interval_s / 2, progress_interval_s)
        last = time.monotonic()
        while True:
            await asyncio.sleep(step)
            recorder.tick()
            if on_progress is not None and time.monotonic() - last >= progress_interval_s:
                last = time.monotonic()
                on_progress(recorder)

    tasks = [asyncio.create_task(drain()), asyncio.create_task(timer()),
             asyncio.create_task(stop.wait())]
    try:
        done, _ = await asyncio.wait(tasks, timeout=duration_s,
                                     return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # re-raise RecordError from drain()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
