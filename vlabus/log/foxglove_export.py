"""``vlabus log export FILE --format foxglove -o OUT.mcap``: a recording as channels Foxglove
renders natively, written with foxglove-sdk (see :mod:`vlabus.log.foxglove_msgs`).

Every envelope is verified with the keyring when one is given (else only parsed: the channels
then say ``vlabus.verification: unchecked``); what fails goes to ``vlabus/rejected`` with its
reason, never to the data channels. Black-box decision records become the decision channel.
Log times are the recording's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from schemas.errors import WireError
from security.keys import Keyring
from security.seal import Opener
from vlabus.envelope import MAGIC
from vlabus.log.foxglove_msgs import FoxgloveSink, Out, Translator
from vlabus.log.reader import LogError, LogRecord, iter_log, time_range
from vlabus.log.view import plain_msgpack
from vlabus.wire import Decoder


def export_foxglove(source: str | Path, target: str | Path, *,
                    topics: Iterable[str] | None = None, keyring: Keyring | None = None,
                    opener: Opener | None = None) -> dict[str, Any]:
    """Write ``target`` (replaced) and return counts: ``messages`` read, ``written`` Foxglove
    messages, ``rejected`` by reason, ``images`` by schema."""
    import foxglove
    from foxglove.mcap import MCAPWriteOptions

    if Path(source).resolve() == Path(target).resolve():
        raise LogError("export writes a new file; give a different output path")
    time_range(source)  # fail early, before creating the output, on a missing or broken file
    decoder = Decoder(keyring or Keyring(), opener=opener)
    translator = Translator()
    context = foxglove.Context()
    verification = "ed25519" if keyring is not None else "unchecked"
    sink = FoxgloveSink(context, metadata={"vlabus.verification": verification})
    counts: dict[str, Any] = {"messages": 0, "written": 0}
    rejected: Counter[str] = Counter()
    images: Counter[str] = Counter()
    options = MCAPWriteOptions(compression=None, profile="")
    with foxglove.open_mcap(target, allow_overwrite=True, context=context,
                            writer_options=options):
        for record in iter_log(source, topics=topics):
            counts["messages"] += 1
            outs = _translate(record, decoder, translator, verify=keyring is not None)
            for out in outs:
                if out.topic == "vlabus/rejected":
                    rejected[out.message["reason"]] += 1
                if out.kind != "json":
                    images[out.kind] += 1
                sink.log(out, record.log_ns)
    counts["written"] = sink.logged
    counts["rejected"] = dict(rejected)
    counts["images"] = dict(images)
    counts["images_not_shown"] = translator.skipped_images
    counts["verification"] = verification
    return counts


def _translate(record: LogRecord, decoder: Decoder, translator: Translator, *,
               verify: bool) -> list[Out]:
    legacy_plain = record.format == "legacy" and not record.data.startswith(MAGIC)
    if record.format == "decision" or legacy_plain:
        plain = plain_msgpack(record.data)
        if plain is None:
            return translator.rejected(record.topic, "malformed", "not a MessagePack map",
                                       len(record.data))
        return translator.decision(record.topic, plain)
    try:
        if verify:
            received = decoder.decode(record.data)
            header, message = received.header, received.message
        else:
            header, message = decoder.parse_unverified(record.data)
    except WireError as exc:
        return translator.rejected(record.topic, exc.reason.value, exc.detail,
                                   len(record.data))
    return translator.envelope(record.topic, record.log_ns, header, message,
                               True if verify else None)

