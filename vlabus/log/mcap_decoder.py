"""Decoding vlabus recordings with the upstream ``mcap`` reader's decoded-message API.

``make_reader(stream, decoder_factories=[VlabusDecoderFactory(keyring)])`` and then
``reader.iter_decoded_messages()`` yield, for ``vlabus-envelope-v1`` channels, a
:class:`~vlabus.wire.Received` (header, typed message; the signature verified against
``keyring``), and for ``decision`` channels (``msgpack``) the decision map. Without a keyring
envelopes are only parsed: ``(header, message)``. A message that fails raises its
:class:`~schemas.errors.WireError`, as any mcap decoder raises on bad bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from mcap.decoder import DecoderFactory
from mcap.records import Schema

from schemas.errors import MalformedError
from security.keys import Keyring
from security.seal import Opener
from vlabus.log.formats import DECISION, ENVELOPE
from vlabus.wire import Decoder


class VlabusDecoderFactory(DecoderFactory):
    """Decoders for the channel formats of :mod:`vlabus.log.formats`."""

    def __init__(self, keyring: Keyring | None = None, opener: Opener | None = None) -> None:
        self._decoder = Decoder(keyring or Keyring(), opener=opener)
        self._verify = keyring is not None

    def decoder_for(self, message_encoding: str,
                    schema: Schema | None) -> Callable[[bytes], Any] | None:
        name = schema.name if schema is not None else ""
        if message_encoding == ENVELOPE.message_encoding and name == ENVELOPE.schema_name:
            return self._decoder.decode if self._verify else self._decoder.parse_unverified
        if message_encoding == DECISION.message_encoding and name == DECISION.schema_name:
            return _decision
        return None


def _decision(data: bytes) -> dict[str, Any]:
    try:
        value = msgspec.msgpack.decode(data)
    except msgspec.DecodeError as exc:
        raise MalformedError(f"decision record is not MessagePack: {exc}") from exc
    if not isinstance(value, dict):
        raise MalformedError("decision record is not a map")
    return value
