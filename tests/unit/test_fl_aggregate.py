"""Pure aggregation logic: FedAvg, coordinate-wise median and trimmed mean, central clipping,
and what poisoned updates (scaled x100, sign-flipped, NaN) can do to each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud_workers.fl.aggregate import CoordinateWise, FedAvg, make_aggregator
from vlabus.fl.delta import clip, norm

SHAPES = {"a": (3, 4), "b": (5,)}


def delta(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {k: (rng.normal(0, scale, s)).astype(np.float32) for k, s in SHAPES.items()}


def flat(d: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([d[k].ravel() for k in sorted(d)])


def test_fedavg_is_the_weighted_mean() -> None:
    rng = np.random.default_rng(0)
    deltas = [delta(rng) for _ in range(3)]
    agg = FedAvg(SHAPES)
    for d, w in zip(deltas, (1.0, 2.0, 3.0), strict=True):
        agg.add(d, w)
    expected = sum(w * flat(d) for d, w in zip(deltas, (1, 2, 3), strict=True)) / 6
    np.testing.assert_allclose(flat(agg.result()), expected, rtol=1e-5)
    assert agg.count == 3


def test_fedavg_refuses_bad_weights_and_empty_result() -> None:
    agg = FedAvg(SHAPES)
    with pytest.raises(ValueError, match="no deltas"):
        agg.result()
    with pytest.raises(ValueError, match="positive"):
        agg.add(delta(np.random.default_rng(0)), float("nan"))


@pytest.mark.parametrize("rule", ["median", "trimmed-mean"])
def test_coordinate_wise_matches_numpy(rule: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    deltas = [delta(rng) for _ in range(7)]
    agg = CoordinateWise(SHAPES, tmp_path / "spool.f32", rule=rule, trim=0.2)
    for d in deltas:
        agg.add(d, 1.0)
    rows = np.sort(np.stack([flat(d) for d in deltas]), axis=0)
    expected = np.median(rows, axis=0) if rule == "median" else rows[1:6].mean(axis=0)
    np.testing.assert_allclose(flat(agg.result()), expected, rtol=1e-5, atol=1e-7)
    # the spool holds one row per client on disk, nothing of it stays in memory
    assert (tmp_path / "spool.f32").stat().st_size == 7 * rows.shape[1] * 4
    agg.close()
    assert not (tmp_path / "spool.f32").exists()


def test_clip_bounds_the_norm_and_keeps_the_direction() -> None:
    rng = np.random.default_rng(2)
    big = delta(rng, scale=100.0)
    clipped, before = clip(big, 1.0)
    assert before == pytest.approx(norm(big))
    assert norm(clipped) == pytest.approx(1.0, rel=1e-5)
    cosine = flat(clipped) @ flat(big) / (np.linalg.norm(flat(big)) * 1.0)
    assert cosine == pytest.approx(1.0, rel=1e-5)
    small = delta(rng, scale=1e-3)
    assert flat(clip(small, 1.0)[0]) == pytest.approx(flat(small))


def honest(rng: np.random.Generator, direction: np.ndarray, n: int) -> list[dict[str, np.ndarray]]:
    """Updates around a common direction (what honest robots agree on), clipped to 1."""
    out = []
    for _ in range(n):
        vec = direction + rng.normal(0, 0.05, direction.shape)
        d = {"a": vec[:12].reshape(3, 4).astype(np.float32), "b": vec[12:].astype(np.float32)}
        out.append(clip(d, 1.0)[0])
    return out


@pytest.mark.parametrize("rule", ["fedavg", "trimmed-mean", "median"])
@pytest.mark.parametrize("attack", ["scaled", "sign_flip"])
def test_a_poisoned_update_moves_the_result_at_most_what_the_clip_allows(
        rule: str, attack: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    direction = rng.normal(0, 1, 17)
    direction *= 0.8 / np.linalg.norm(direction)
    good = honest(rng, direction, 4)
    bad = good[0] if attack == "scaled" else {k: -v for k, v in good[0].items()}
    if attack == "scaled":
        bad = {k: 100 * v for k, v in bad.items()}
    clean = make_aggregator(rule, SHAPES, tmp_path / "clean.f32")
    attacked = make_aggregator(rule, SHAPES, tmp_path / "attacked.f32")
    for d in good:
        clean.add(d, 1.0)
        attacked.add(d, 1.0)
    attacked.add(clip(bad, 1.0)[0], 1.0)  # the coordinator clips before aggregating
    shift = np.linalg.norm(flat(attacked.result()) - flat(clean.result()))
    # one client of five, clipped to 1: the mean moves by at most 2 x 1 / 5
    assert shift <= 2 * 1.0 / 5 + 1e-6
    # and the result still points where the honest robots agree
    result = flat(attacked.result())
    assert result @ direction > 0.5 * np.linalg.norm(result) * np.linalg.norm(direction)


def test_median_ignores_a_minority_of_extreme_values(tmp_path: Path) -> None:
    agg = CoordinateWise({"x": (2,)}, tmp_path / "s.f32", rule="median")
    for value in (1.0, 1.1, 0.9, 1e6, -1e6):
        agg.add({"x": np.full(2, value, np.float32)}, 1.0)
    np.testing.assert_allclose(agg.result()["x"], [1.0, 1.0])


def test_trimmed_mean_cuts_at_least_one_value_at_each_end(tmp_path: Path) -> None:
    agg = CoordinateWise({"x": (1,)}, tmp_path / "s.f32", rule="trimmed-mean", trim=0.1)
    for value in (1.0, 2.0, 3.0, 1000.0):
        agg.add({"x": np.array([value], np.float32)}, 1.0)
    assert agg.cut() == 1
    assert agg.result()["x"][0] == pytest.approx(2.5)


def test_unknown_rule_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="aggregate"):
        make_aggregator("mean-of-means", SHAPES, tmp_path / "s")
