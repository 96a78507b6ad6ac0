"""The action-chunk queue: timestamps, refill accounting, staleness and blending."""

from __future__ import annotations

import numpy as np
import pytest

from edge_agent.chunks import ActionQueue


def chunk(value: float, rows: int, dim: int = 2) -> np.ndarray:
    return np.full((rows, dim), value, np.float32)


def test_actions_are_due_at_their_tick() -> None:
    queue = ActionQueue(10, origin_ns=1000)
    assert queue.due_ns(3) == 1030
    assert queue.tick_at(1035) == 3
    assert queue.tick_at(0) == 0


def test_chunk_fills_ticks_and_pop_executes_in_order() -> None:
    queue = ActionQueue(10)
    assert queue.add_chunk(0, chunk(1.0, 4), "cloud") == 4
    assert queue.ahead() == 4
    item = queue.pop(0)
    assert item is not None
    assert item.source == "cloud"
    assert item.tick == 0
    assert queue.ahead() == 3
    assert queue.dry_tick() == 4


def test_pop_skips_ticks_that_are_no_longer_due() -> None:
    queue = ActionQueue(10)
    queue.add_chunk(0, np.arange(8, dtype=np.float32).reshape(4, 2), "cloud")
    item = queue.pop(2)
    assert item is not None
    assert item.action.tolist() == [4.0, 5.0]
    assert len(queue) == 1
    assert queue.pop(1) is None  # never executed late


def test_stale_rows_of_a_late_chunk_are_dropped() -> None:
    queue = ActionQueue(10)
    queue.add_chunk(0, chunk(0.0, 2), "cloud")
    queue.pop(0)
    queue.pop(1)
    landed = queue.add_chunk(0, chunk(1.0, 5), "cloud")  # answers frame 0, now at tick 2
    assert landed == 3
    assert queue.dropped_stale == 2
    first = queue.pop(2)
    assert first is not None
    assert first.action[0] == 1.0


def test_overlap_is_cross_faded_from_old_to_new() -> None:
    queue = ActionQueue(10)
    queue.add_chunk(0, chunk(0.0, 4), "cloud")
    queue.add_chunk(1, chunk(1.0, 4), "fallback", cause="timeout")  # overlaps ticks 1..3
    weights = []
    for tick in range(1, 5):
        item = queue.pop(tick)
        assert item is not None
        weights.append(float(item.action[0]))
        assert item.source == "fallback"
        assert item.cause == "timeout"
    # 3 overlapping ticks: new weight 1/4, 2/4, 3/4, then the new chunk alone
    assert weights == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert queue.blended == 3


def test_refill_threshold_is_seen_through_ahead() -> None:
    queue = ActionQueue(10)
    queue.add_chunk(0, chunk(0.0, 6), "cloud")
    threshold = 3
    refills = []
    for tick in range(6):
        queue.pop(tick)
        if queue.ahead() < threshold:
            refills.append(tick)
            queue.add_chunk(tick, chunk(1.0, 6), "cloud")
    assert refills == [3]
    assert queue.ahead() == 3  # the refill from tick 3 reaches tick 8; ticks 6, 7, 8 left


def test_period_stride_maps_a_slower_chunk_onto_control_ticks() -> None:
    queue = ActionQueue(10)
    queue.add_chunk(0, np.arange(3, dtype=np.float32)[:, None], "cloud", tick_stride=2.0)
    assert [queue.has(t) for t in range(5)] == [True, False, True, False, True]


def test_capacity_bounds_how_far_ahead_rows_land() -> None:
    queue = ActionQueue(10, capacity=4)
    assert queue.add_chunk(0, chunk(1.0, 10), "cloud") == 4
    assert len(queue) == 4


def test_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        ActionQueue(0)
