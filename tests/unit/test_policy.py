"""vlabus.policy.reference: Observation from frames, the reference VLA, safetensors, load_policy."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from schemas.arrays import pack_array
from schemas.images import encode_image
from schemas.messages import Frame
from vlabus.policy import Observation, Policy, PolicyInputError, describe
from vlabus.policy.load import load_policy
from vlabus.policy.reference import NoopPolicy, ReferencePolicy, resolve_device, tokenize


def obs(seed: int = 0, command: str = "pick up the red cube", size: int = 64,
        cameras: tuple[str, ...] = ("front",), state_dim: int = 14) -> Observation:
    rng = np.random.default_rng(seed)
    images = {c: rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for c in cameras}
    return Observation(images, command, rng.normal(size=state_dim).astype(np.float32))


def small(**kw: object) -> ReferencePolicy:
    return ReferencePolicy.seeded(device="cpu", width=16, **kw)  # type: ignore[arg-type]


def test_reference_output_shape_dtype_and_range() -> None:
    policy = small(horizon=5, action_dim=3)
    out = policy.infer([obs(i) for i in range(4)])
    assert out.shape == (4, 5, 3)
    assert out.dtype == np.float32
    assert np.all(np.abs(out) <= 1.0)
    assert isinstance(policy, Policy)
    assert describe(policy) == ("reference", 0)


def test_seeded_weights_are_deterministic_and_seed_dependent() -> None:
    batch = [obs(1), obs(2)]
    a = small(seed=3).infer(batch)
    np.testing.assert_array_equal(a, small(seed=3).infer(batch))
    assert not np.allclose(a, small(seed=4).infer(batch))


def test_batched_matches_one_by_one() -> None:
    policy = small()
    batch = [obs(i) for i in range(5)]
    together = policy.infer(batch)
    alone = np.concatenate([policy.infer([o]) for o in batch])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)


def test_every_input_matters() -> None:
    policy = small()
    base = obs(0)
    ref = policy.infer([base])
    other_image = Observation(obs(9).images, base.command, base.state)
    other_command = Observation(base.images, "open the drawer", base.state)
    other_state = Observation(base.images, base.command, base.state + 1)
    for changed in (other_image, other_command, other_state):
        assert not np.allclose(ref, policy.infer([changed]))


def test_safetensors_round_trip(tmp_path: Path) -> None:
    policy = small(version=3, cameras=("front", "wrist"))
    path = policy.save_safetensors(tmp_path / "p.safetensors")
    assert path.read_bytes()[8:9] == b"{"  # safetensors: u64 header length, then JSON
    loaded = ReferencePolicy.load_safetensors(path, device="cpu")
    assert loaded.config == policy.config
    assert describe(loaded) == ("reference", 3)
    batch = [obs(i, cameras=("front", "wrist")) for i in range(3)]
    np.testing.assert_array_equal(loaded.infer(batch), policy.infer(batch))
    via_spec = load_policy(str(path), device="cpu")
    np.testing.assert_array_equal(via_spec.infer(batch), policy.infer(batch))


def test_safetensors_without_config_is_refused(tmp_path: Path) -> None:
    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a reference policy"):
        ReferencePolicy.load_safetensors(tmp_path / "x.safetensors", device="cpu")


def test_misfit_observations_raise_policy_input_error() -> None:
    policy = small()
    with pytest.raises(PolicyInputError, match="camera 'front'"):
        policy.infer([obs(cameras=("side",))])
    with pytest.raises(PolicyInputError, match="state"):
        policy.infer([obs(state_dim=3)])
    with pytest.raises(PolicyInputError, match="mixes shapes"):
        policy.infer([obs(size=32), obs(size=64)])


def test_staging_buffer_grows_and_reuses() -> None:
    policy = small()
    policy.infer([obs(i) for i in range(2)])
    first = policy._staging["front"]
    policy.infer([obs(i) for i in range(2)])
    assert policy._staging["front"] is first
    policy.infer([obs(i) for i in range(6)])
    assert policy._staging["front"].shape[0] == 6


def test_observation_from_frame_is_a_view() -> None:
    image = np.arange(8 * 8 * 3, dtype=np.uint8).reshape(8, 8, 3)
    frame = Frame(robot_id="robot-a", step=1, cameras={"front": encode_image(image)},
                  command="go", state=pack_array(np.arange(4, dtype=np.float64)), capture_ns=1)
    o = Observation.from_frame(frame)
    np.testing.assert_array_equal(o.images["front"], image)
    assert np.shares_memory(o.images["front"], np.frombuffer(frame.cameras["front"].data,
                                                            np.uint8))
    assert o.state.dtype == np.float32
    assert o.state.tolist() == [0.0, 1.0, 2.0, 3.0]
    jpeg = Frame(robot_id="robot-a", step=1,
                 cameras={"front": encode_image(np.full((16, 16, 3), 128, np.uint8), "jpeg")},
                 command="go", state=pack_array(np.zeros(2, np.float32)), capture_ns=1)
    assert Observation.from_frame(jpeg).images["front"].shape == (16, 16, 3)


def test_tokenize_is_stable_and_bounded() -> None:
    assert tokenize("Pick UP the cube!", 4096) == tokenize("pick up the cube", 4096)
    assert all(0 <= t < 10 for t in tokenize("a b c d e f", 10))
    assert len(tokenize("w " * 100, 4096)) == 32


def test_noop_policy() -> None:
    out = NoopPolicy(3, 2).infer([obs(), obs()])
    assert out.shape == (2, 3, 2)
    assert not out.any()


def test_load_policy_specs() -> None:
    assert isinstance(load_policy("noop"), NoopPolicy)
    assert isinstance(load_policy("reference", device="cpu"), ReferencePolicy)
    module = types.ModuleType("user_policy_mod")

    class Mine:
        name = "mine"
        version = 5

        def infer(self, batch: object) -> np.ndarray:
            return np.ones((len(batch), 1, 1), np.float32)  # type: ignore[arg-type]

    module.make = Mine  # type: ignore[attr-defined]
    module.broken = object  # type: ignore[attr-defined]
    sys.modules["user_policy_mod"] = module
    try:
        mine = load_policy("user_policy_mod:make")
        assert describe(mine) == ("mine", 5)
        with pytest.raises(TypeError, match="no infer"):
            load_policy("user_policy_mod:broken")
    finally:
        del sys.modules["user_policy_mod"]
    with pytest.raises(ValueError, match="module:factory"):
        load_policy("nonsense")


def test_resolve_device() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            resolve_device("cuda")
