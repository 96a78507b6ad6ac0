"""vlabus.quantiles: the one quantile helper behind every --json summary."""

from __future__ import annotations

from collections import deque

from vlabus.quantiles import quantiles


def test_names_scale_and_interpolation() -> None:
    samples = deque(range(0, 101_000_000, 1_000_000))  # 0..100 ms in ns
    got = quantiles(samples, (0.5, 0.99, 1.0), scale=1e6)
    assert got == {"p50": 50.0, "p99": 99.0, "max": 100.0}
    assert quantiles([1.0, 2.0], (0.5,)) == {"p50": 1.5}


def test_rounding_and_empty_samples() -> None:
    assert quantiles([1 / 3], (0.5,), digits=4) == {"p50": 0.3333}
    assert quantiles([], (0.5, 0.99, 1.0)) == {"p50": 0.0, "p99": 0.0, "max": 0.0}


def test_negative_offsets_are_kept() -> None:
    assert quantiles([-2.0, -1.0, 0.0], (0.5,)) == {"p50": -1.0}
