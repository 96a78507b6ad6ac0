"""DeadlineQueue: ordering, deadline drops, shedding — injected clock, no sleeps."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cloud_workers.queue import DeadlineQueue, InferenceEstimate, Request

MS = 1_000_000


def req(name: str, priority: int = 2, deadline: int = 0, model: str = "m") -> Request:
    return Request(model=model, priority=priority, deadline_ns=deadline, arrived_ns=0,
                   payload=name)


def names(requests: list[Request]) -> list[str]:
    return [r.payload for r in requests]


def test_order_is_priority_then_deadline_then_arrival() -> None:
    q = DeadlineQueue(16, clock=lambda: 0)
    for r in [req("low", 3, 5 * MS), req("late", 2, 90 * MS), req("early", 2, 10 * MS),
              req("none", 2, 0), req("crit", 0, 100 * MS), req("early2", 2, 10 * MS)]:
        assert q.push(r) == []
    assert names(q.take("m", 10)) == ["crit", "early", "early2", "late", "none", "low"]


def test_take_groups_by_model_and_keeps_others() -> None:
    q = DeadlineQueue(16, clock=lambda: 0)
    q.push(req("a1", model="a"))
    q.push(req("b1", model="b"))
    q.push(req("a2", model="a"))
    assert names(q.take("a", 5)) == ["a1", "a2"]
    assert len(q) == 1
    assert q.head() is not None
    assert q.head().payload == "b1"


def test_take_respects_limit() -> None:
    q = DeadlineQueue(16, clock=lambda: 0)
    for i in range(5):
        q.push(req(f"r{i}"))
    assert names(q.take("m", 3)) == ["r0", "r1", "r2"]
    assert len(q) == 2


def test_hopeless_requests_dropped_using_estimate() -> None:
    est = InferenceEstimate()
    est.observe("m", 20 * MS)
    q = DeadlineQueue(16, clock=lambda: 100 * MS, estimate=est)
    q.push(req("tight", deadline=110 * MS))   # 100 + 20 > 110: cannot be met
    q.push(req("ok", deadline=130 * MS))
    q.push(req("none"))
    q.push(req("other", deadline=110 * MS, model="fast"))  # no estimate for "fast" yet
    assert names(q.drop_hopeless()) == ["tight"]
    assert sorted(names(q.drain())) == ["none", "ok", "other"]


def test_estimate_is_ewma() -> None:
    est = InferenceEstimate(alpha=0.5, initial_ns=7)
    assert est.get("m") == 7
    est.observe("m", 100)
    est.observe("m", 200)
    assert est.get("m") == 150


def test_full_queue_sheds_lowest_priority_latest_deadline() -> None:
    q = DeadlineQueue(3, clock=lambda: 0)
    q.push(req("p2-early", 2, 10 * MS))
    q.push(req("p3-late", 3, 50 * MS))
    q.push(req("p3-early", 3, 20 * MS))
    shed = q.push(req("p1", 1, 90 * MS))
    assert names(shed) == ["p3-late"]
    shed = q.push(req("p4", 4, 1 * MS))    # newcomer sorts last: it is the one shed
    assert names(shed) == ["p4"]
    assert len(q) == 3
    assert names(q.drain()) == ["p1", "p2-early", "p3-early"]


def test_queue_never_exceeds_capacity_under_flood() -> None:
    q = DeadlineQueue(8, clock=lambda: 0)
    shed = 0
    for i in range(1000):
        shed += len(q.push(req(f"r{i}", priority=i % 5, deadline=(i % 7) * MS)))
        assert len(q) <= 8
    assert shed == 992
    assert all(r.priority == 0 for r in q.drain())


@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 50)), max_size=60),
       st.integers(1, 12))
def test_queue_keeps_the_best_entries_in_order(entries: list[tuple[int, int]],
                                               capacity: int) -> None:
    q = DeadlineQueue(capacity, clock=lambda: 0)
    shed: list[Request] = []
    for i, (priority, deadline) in enumerate(entries):
        shed += q.push(req(f"r{i}", priority, deadline * MS))
    kept = q.drain()
    keys = [r.sort_key for r in kept]
    assert keys == sorted(keys)
    assert len(kept) == min(capacity, len(entries))
    assert len(shed) == len(entries) - len(kept)
    if kept and shed:
        assert max(keys) < min(r.sort_key for r in shed)


def test_an_inflated_estimate_cannot_starve_the_model_forever() -> None:
    est = InferenceEstimate(alpha=0.2)
    est.observe("m", 90 * MS)  # one pathological first batch
    now = [0]
    q = DeadlineQueue(64, clock=lambda: now[0], estimate=est)
    served_at = None
    for step in range(50):  # a robot sending frames with a 25 ms budget every 10 ms
        now[0] = step * 10 * MS
        q.push(req(f"f{step}", deadline=now[0] + 25 * MS))
        q.drop_hopeless()
        if q.head() is not None:
            served_at = step
            break
    assert served_at is not None, "every frame was dropped: the estimate never recovered"
    assert est.get("m") < 25 * MS
