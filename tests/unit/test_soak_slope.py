"""The soak's leak figure: a restarted process is fitted per run, so restarts are not growth."""

from __future__ import annotations

import pytest

from bench.soak import slope


def test_flat_runs_of_a_restarted_process_have_no_slope() -> None:
    # Each run sits at a higher level than the last (say, a bigger heap after a restart at a
    # busier moment), flat within the run: one fit over all points would call that a leak.
    points, runs = [], []
    for run in range(4):
        for i in range(10):
            points.append((run * 60.0 + i * 5.0, 100.0 + 20 * run))
            runs.append(run)
    assert slope(points) == pytest.approx(20.0, rel=0.2)  # the pooled fit is fooled
    assert slope(points, runs) == pytest.approx(0.0, abs=1e-9)


def test_growth_within_each_run_is_found() -> None:
    points, runs = [], []
    for run in range(3):
        for i in range(10):
            points.append((run * 60.0 + i * 6.0, 50.0 + 0.5 * i))  # 0.5 MB per 6 s
            runs.append(run)
    assert slope(points, runs) == pytest.approx(5.0)  # MB per minute
