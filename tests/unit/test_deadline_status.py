"""schemas.deadline and schemas.status: injected clocks, no sleeps."""

from __future__ import annotations

import msgspec
import pytest

from schemas.deadline import Clocks, Deadline
from schemas.messages import Status
from schemas.status import status_message

MS = 1_000_000
SECOND = 1_000_000_000


class TwoClocks:
    """A monotonic and a wall clock that advance together (the wall one may also step)."""

    def __init__(self) -> None:
        self.mono = 5 * SECOND
        self.wall = 1_700_000_000 * SECOND

    def clocks(self) -> Clocks:
        return Clocks(monotonic=lambda: self.mono, wall=lambda: self.wall)

    def advance(self, ns: int) -> None:
        self.mono += ns
        self.wall += ns


def test_deadline_crosses_to_the_wall_clock_and_back() -> None:
    now = TwoClocks()
    clocks = now.clocks()
    deadline = Deadline.within(25 * MS, clocks)
    assert deadline.monotonic_ns == 5 * SECOND + 25 * MS
    wall = deadline.wall_ns(clocks)
    assert wall == 1_700_000_000 * SECOND + 25 * MS
    assert Deadline.from_wall(wall, clocks) == deadline
    now.advance(10 * MS)
    assert deadline.wall_ns(clocks) == wall  # the same instant, read later
    assert deadline.remaining_ns(clocks) == 15 * MS


def test_a_wall_clock_step_does_not_move_a_held_deadline() -> None:
    now = TwoClocks()
    clocks = now.clocks()
    deadline = Deadline.within(25 * MS, clocks)
    now.wall += 3600 * SECOND  # NTP steps the wall clock an hour ahead
    assert deadline.remaining_ns(clocks) == 25 * MS
    assert deadline.wall_ns(clocks) == now.wall + 25 * MS  # the header names the new wall time


def test_expiry_has_a_floor_and_whole_seconds_round_up() -> None:
    now = TwoClocks()
    clocks = now.clocks()
    deadline = Deadline.within(1500 * MS, clocks)
    assert deadline.expiry_s(clocks) == pytest.approx(1.5)
    assert deadline.expiry_s(clocks, floor_s=1.0, whole=True) == 2.0
    now.advance(2 * SECOND)  # passed: the floor applies
    assert deadline.expiry_s(clocks) == 0.001
    assert deadline.expiry_s(clocks, floor_s=1.0, whole=True) == 1.0


def test_status_builder_fills_every_field_and_round_trips() -> None:
    status = status_message("robot-a", "robot", "online", session=7, models={"edge": 3},
                            time_ns=42)
    assert status == Status(client_id="robot-a", role="robot", state="online", session=7,
                            time_ns=42, models={"edge": 3}, detail={})
    wire = msgspec.msgpack.encode(status)
    assert msgspec.msgpack.decode(wire, type=Status) == status
    worker = status_message("worker-1", "worker", "offline", session=1,
                            detail={"group": "workers"}, time_ns=1)
    assert worker.detail == {"group": "workers"}
    assert worker.models == {}


def test_status_builder_refuses_an_unknown_state() -> None:
    with pytest.raises(ValueError, match="status state 'asleep'"):
        status_message("robot-a", "robot", "asleep", session=1)
