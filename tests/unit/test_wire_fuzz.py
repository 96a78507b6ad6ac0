"""Property tests: whatever bytes arrive, ``decode`` returns a verified message or raises a
WireError, and only a validly signed envelope is ever accepted."""

from __future__ import annotations

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.errors import Reason, WireError
from security.seal import Opener, PoolSecret
from tests.support.wire import Fleet, craft, frame, header_map
from vlabus.wire import Encoder

FLEET = Fleet()
POOL = PoolSecret.generate("gpu")
ENCODED = [
    Encoder(FLEET.robot, clock=FLEET.clock, start_seq=1).encode(frame()),
    Encoder(FLEET.robot, clock=FLEET.clock, start_seq=1, compress="always").encode(frame(size=32)),
    Encoder(FLEET.robot, clock=FLEET.clock, start_seq=1, seal_to=POOL.public).encode(frame()),
]
SETTINGS = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _decode_or_reason(data: bytes, fleet: Fleet) -> Reason | None:
    fleet.decoder.opener = Opener([POOL])
    try:
        fleet.decoder.decode(data)
    except WireError as exc:
        return exc.reason
    return None


@SETTINGS
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(data: bytes) -> None:
    assert _decode_or_reason(data, Fleet()) is not None


@SETTINGS
@given(st.binary(max_size=600))
def test_arbitrary_bytes_behind_a_valid_prefix(data: bytes) -> None:
    prefix = b"VB\x01" + min(len(data), 0xFFFF).to_bytes(2, "big")
    assert _decode_or_reason(prefix + data, Fleet()) is not None


@SETTINGS
@given(st.sampled_from(ENCODED), st.data())
def test_mutated_real_envelopes(wire: bytes, data: st.DataObject) -> None:
    mutated = bytearray(wire)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(mutated) - 1))
        action = data.draw(st.sampled_from(["set", "insert", "delete"]))
        if action == "set":
            mutated[at] = data.draw(st.integers(0, 255))
        elif action == "insert":
            mutated[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        else:
            del mutated[at: at + data.draw(st.integers(1, 8))]
    # A fleet that knows the sender's key (and shares its clock): a mutation must fail the
    # signature or an earlier check, not merely the key lookup.
    fleet = Fleet(clock=FLEET.clock, robot=FLEET.robot)
    reason = _decode_or_reason(bytes(mutated), fleet)
    if bytes(mutated) != wire:
        assert reason is not None
    else:
        assert reason is None


@SETTINGS
@given(st.binary(max_size=512), st.integers(0, 3), st.integers(0, 1 << 20))
def test_validly_signed_arbitrary_bodies(body: bytes, enc: int, raw_len: int) -> None:
    """The steps after the signature (unseal, decompress, typed decode) hold up on their own."""
    header = header_map(FLEET.robot, enc=enc, raw_len=raw_len if enc else len(body))
    reason = _decode_or_reason(craft(FLEET.robot, header, body), Fleet(robot=FLEET.robot))
    assert reason is not None


@SETTINGS
@given(st.dictionaries(st.text(max_size=8), st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 64) - 1), st.floats(),
    st.text(max_size=70), st.binary(max_size=20),
    st.lists(st.integers(-(1 << 63), (1 << 63) - 1), max_size=3)),
    max_size=12))
def test_validly_signed_arbitrary_headers(fields: dict[str, object]) -> None:
    header = {**header_map(FLEET.robot), **fields}
    reason = _decode_or_reason(craft(FLEET.robot, msgpack.packb(header), b""),
                               Fleet(robot=FLEET.robot))
    assert reason is not None
