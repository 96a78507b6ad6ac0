"""The CUDA path of the reference policy and the worker. Skipped where torch sees no GPU.

CI has no GPU, so these run only on a machine with one (docs/development.md gives the command,
docs/performance.md the GPU figures). They check what the CPU suite cannot: the pinned staging
buffers, non-blocking copies that the next batch must not overwrite in flight, and that a worker
on ``--device cuda`` answers with the same actions as on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from schemas.arrays import unpack_array
from schemas.messages import Action
from tests.support.frames import make_frame
from tests.support.keys import KeyDir
from tests.support.robot import Robot
from tests.support.worker import run_on_memory, serving
from vlabus.policy import Observation, Policy
from vlabus.policy.reference import ReferencePolicy

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device")


@pytest.fixture
def exact_fp32() -> Iterator[None]:
    """cuDNN convolutions default to TF32 on Ampere and later (about 1e-3 relative error); the
    comparisons with the CPU below check the data path, so they turn it off while they run."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def observations(count: int, seed: int, size: int = 96) -> list[Observation]:
    rng = np.random.default_rng(seed)
    return [Observation({"front": rng.integers(0, 255, (size, size, 3), dtype=np.uint8)},
                        f"pick up cube {i}", rng.normal(size=14).astype(np.float32))
            for i in range(count)]


def pair(**kw: object) -> tuple[ReferencePolicy, ReferencePolicy]:
    cpu = ReferencePolicy.seeded(device="cpu", **kw)  # type: ignore[arg-type]
    gpu = ReferencePolicy.seeded(device="cuda", **kw)  # type: ignore[arg-type]
    return cpu, gpu


def test_auto_picks_cuda_and_weights_live_there() -> None:
    policy = ReferencePolicy.seeded(device="auto", width=16)
    assert policy.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in policy.module.parameters())


@pytest.mark.usefixtures("exact_fp32")
def test_cuda_answers_match_cpu_across_batch_sizes() -> None:
    cpu, gpu = pair(width=16, horizon=6, action_dim=4)
    for count in (1, 7, 32, 3):  # grow, then shrink: the staging buffer is reused smaller
        batch = observations(count, seed=count)
        np.testing.assert_allclose(gpu.infer(batch), cpu.infer(batch), rtol=1e-3, atol=1e-4)


def test_staging_buffers_are_pinned_and_reused() -> None:
    _, gpu = pair(width=16)
    gpu.infer(observations(8, seed=1))
    first = gpu._torch_staging["front"]
    assert first.is_pinned()
    gpu.infer(observations(5, seed=2))
    assert gpu._torch_staging["front"].data_ptr() == first.data_ptr()


@pytest.mark.usefixtures("exact_fp32")
def test_back_to_back_batches_do_not_overwrite_a_copy_in_flight() -> None:
    # Each batch refills the same pinned buffer. If a non-blocking upload of batch k were still
    # queued when batch k+1 is staged, batch k would see batch k+1's pixels.
    cpu, gpu = pair(width=16)
    batches = [observations(16, seed=s, size=224) for s in range(6)]
    got = [gpu.infer(b) for b in batches]
    for batch, out in zip(batches, got, strict=True):
        np.testing.assert_allclose(out, cpu.infer(batch), rtol=1e-3, atol=1e-4)


@pytest.mark.usefixtures("exact_fp32")
def test_worker_on_cuda_serves_the_same_actions_as_on_cpu(keydir: KeyDir) -> None:
    frames = [make_frame("robot-a", step) for step in range(5)]

    async def serve(url: str, device: str) -> dict[str, Action]:
        policy = ReferencePolicy.seeded(device=device, width=16, horizon=4, action_dim=3)
        policies: dict[str, Policy] = {"reference": policy}
        async with serving(url, keydir, policies):
            robot = await Robot.connect(url, keydir.signers["robot-a"], keydir.ring)
            for i, frame in enumerate(frames):
                await robot.send_frame(frame, f"c{i}")
            await robot.wait_for(len(frames))
            await robot.close()
            return {k: v for k, v in robot.replies.items() if isinstance(v, Action)}

    results: dict[str, dict[str, Action]] = {}

    def on(device: str) -> None:
        async def body(url: str) -> None:
            results[device] = await serve(url, device)
        run_on_memory(body)

    on("cpu")
    on("cuda")
    assert sorted(results["cuda"]) == sorted(results["cpu"]) == [f"c{i}" for i in range(5)]
    for corr, action in results["cuda"].items():
        np.testing.assert_allclose(unpack_array(action.actions),
                                   unpack_array(results["cpu"][corr].actions),
                                   rtol=1e-3, atol=1e-4)
        assert action.inference_ns > 0


def test_cuda_worker_loop_survives_many_batches(keydir: KeyDir) -> None:
    async def body(url: str) -> None:
        policy = ReferencePolicy.seeded(device="cuda", width=16, horizon=4, action_dim=3)
        async with serving(url, keydir, {"reference": policy}, max_batch=8) as worker:
            robot = await Robot.connect(url, keydir.signers["robot-a"], keydir.ring)
            for step in range(64):
                await robot.send_frame(make_frame("robot-a", step), f"c{step}")
            await robot.wait_for(64)
            await robot.close()
            summary = worker.metrics.summary.as_dict()
            assert summary["served"] == 64
            assert summary["batches"] < 64  # they were batched, not served one by one
    run_on_memory(body)
