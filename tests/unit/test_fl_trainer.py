"""Private local training: DP-SGD lowers the imitation loss, the accountant's ε grows round by
round and a robot stops when its budget is spent; personal tensors stay on the robot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from edge_agent.fl.buffer import ExperienceBuffer
from edge_agent.fl.trainer import TrainJob, train
from edge_agent.sim import SimRobot
from vlabus.fl.privacy import spent_epsilon
from vlabus.policy.reference import ReferencePolicy

pytest.importorskip("opacus")


@pytest.fixture(scope="module")
def robot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base policy and a buffer of 96 (observation, cloud chunk) pairs."""
    root = tmp_path_factory.mktemp("robot")
    ReferencePolicy.seeded(device="cpu", width=16, name="edge").save_safetensors(
        root / "base.safetensors")
    cloud = ReferencePolicy.seeded(device="cpu", width=32, seed=1000)
    robot = SimRobot(size=48, ring=8, seed=3)
    buffer = ExperienceBuffer(root / "buffer", segment=32)
    for step in range(96):
        obs = robot.observe(step)
        chunk = cloud.infer([obs])[0]
        robot.apply(chunk[0])
        buffer.add(obs, chunk)
    buffer.close()
    return root


def job(root: Path, state: Path, number: int, **extra: object) -> TrainJob:
    fields: dict[str, object] = {
        "base_path": str(root / "base.safetensors"), "buffer_dir": str(root / "buffer"),
        "state_dir": str(state), "round": number, "examples": 64, "batch_size": 32,
        "epochs": 2, "lr": 5.0, "example_clip": 0.1, "noise_multiplier": 1.5, "delta": 1e-5,
        "update_clip": 2.0, "budget_epsilon": 6.5, "cpu_share": 1.0}
    fields.update(extra)
    return TrainJob(**fields)  # type: ignore[arg-type]


def test_rounds_spend_privacy_until_the_budget_stops_them(robot_dir: Path,
                                                           tmp_path: Path) -> None:
    first = train(job(robot_dir, tmp_path, 0))
    assert first.status == "trained"
    assert first.loss_after < first.loss_before
    assert set(first.delta) == {"state.weight", "state.bias", "head.0.weight", "head.0.bias",
                                "head.2.weight", "head.2.bias"}
    assert all(np.isfinite(v).all() for v in first.delta.values())
    assert 0 < first.epsilon < 6.5
    assert first.norm > 0
    second = train(job(robot_dir, tmp_path, 1))
    assert second.status == "trained"
    assert second.epsilon > first.epsilon
    # the history survives: a third round would pass 6.5, so it is not trained at all
    assert spent_epsilon([(1.5, 0.5, 4)] * 3, 1e-5) > 6.5
    third = train(job(robot_dir, tmp_path, 2))
    assert third.status == "budget_spent"
    assert third.delta == {}
    assert third.epsilon == pytest.approx(second.epsilon)


def test_personal_tensors_are_kept_and_never_sent(robot_dir: Path, tmp_path: Path) -> None:
    result = train(job(robot_dir, tmp_path, 0, personal=("head.2.",), budget_epsilon=100.0))
    assert result.status == "trained"
    assert not any(name.startswith("head.2.") for name in result.delta)
    kept = load_file(str(tmp_path / "personal.safetensors"))
    assert set(kept) == {"head.2.weight", "head.2.bias"}


def test_too_few_examples_or_unsupported_tensors_are_not_trained(robot_dir: Path,
                                                                  tmp_path: Path) -> None:
    assert train(job(robot_dir, tmp_path, 0, examples=500)).status == "not_enough_data"
    assert train(job(robot_dir, tmp_path, 0, trainable=("cameras.",))).status == "unsupported"
