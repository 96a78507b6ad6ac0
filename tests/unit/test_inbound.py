"""vlabus.inbound: bad input is counted by reason, logged at a bounded rate, never raised."""

from __future__ import annotations

import logging

import pytest

from schemas.errors import Reason
from security.keys import Keyring
from vlabus.bus.transport import Message
from vlabus.inbound import Rejections, accept
from vlabus.wire import Decoder


def test_flood_of_garbage_is_counted_each_time_and_logged_a_few_times(
        caplog: pytest.LogCaptureFixture) -> None:
    decoder = Decoder(Keyring())
    seen: list[Reason] = []
    rejections = Rejections(seen.append, log_burst=3, log_period_s=60.0)
    with caplog.at_level(logging.WARNING, logger="vlabus.inbound"):
        for i in range(500):
            assert accept(decoder, Message("vla/v1/robot-a/frame", b"junk%d" % i, 0),
                          rejections) is None
    assert rejections.by_reason == {"malformed": 500}
    assert rejections.total == 500
    assert len(seen) == 500
    assert len(caplog.records) == 3
    assert "malformed" in caplog.records[0].getMessage()
