"""Model profiles as data files and the stand-in policy that follows one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vlabus.policy import Observation
from vlabus.policy.load import load_policy
from vlabus.policy.profile import Profile, ProfilePolicy, available, load_profile


def test_shipped_profiles_load_and_say_how_they_were_made() -> None:
    names = available()
    assert {"pi0-rtx4090-eager", "smolvla-rtx4090-graphs", "reference-cpu"} <= set(names)
    for name in names:
        profile = load_profile(name)
        assert profile.method.startswith("MEASURED" if profile.measured else "ESTIMATE")
        assert profile.sources
        times = [profile.time_ns(b) for b in (1, 2, 4, 8)]
        assert all(t > 0 for t in times)


def test_bad_profiles_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no model profile"):
        load_profile("no-such-model")
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"name": "x", "batch_ms": {"2": 1.0}}), encoding="utf-8")
    with pytest.raises(ValueError, match="not a model profile"):
        load_profile(str(path))
    path.write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="not JSON"):
        load_profile(str(path))


def test_profile_policy_returns_chunks_of_the_profiles_shape_and_counts_device_time() -> None:
    profile = Profile(name="tiny", model="t", device="none", measured=False, method="test",
                      sources=("test",), batch_ms=((1, 0.5), (4, 1.0)), horizon=5,
                      action_dim=3, state_dim=4)
    policy = ProfilePolicy(profile)
    obs = [Observation(images={}, command="c", state=np.full(4, float(i), np.float32))
           for i in range(3)]
    out = policy.infer(obs)
    assert out.shape == (3, 5, 3)
    assert out.dtype == np.float32
    assert not np.allclose(out[1], out[2])  # follows each observation's state
    assert policy.device_ns == profile.time_ns(3)
    assert policy.batches == 1


def test_policy_spec_profile_name() -> None:
    policy = load_policy("profile:smolvla-rtx4090-graphs")
    assert isinstance(policy, ProfilePolicy)
    assert policy.name == "smolvla-rtx4090-graphs"
