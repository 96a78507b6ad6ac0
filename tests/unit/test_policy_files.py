"""``--policy`` from files: torch.export ``.pt2``, TorchScript ``.pt``, a directory with
config.json + safetensors; each answers like the reference policy it was made from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vlabus.policy import Observation
from vlabus.policy.exported import ExportedPolicy, export_reference, save_directory
from vlabus.policy.load import load_policy
from vlabus.policy.reference import ReferencePolicy

CAMERAS = ("top", "wrist")


@pytest.fixture(scope="module")
def policy() -> ReferencePolicy:
    return ReferencePolicy.seeded(device="cpu", cameras=CAMERAS, state_dim=6, horizon=5,
                                  action_dim=3, width=8, seed=7, name="tiny", version=4)


def batch(size: int) -> list[Observation]:
    rng = np.random.default_rng(size)
    return [Observation(images={c: rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
                                for c in CAMERAS},
                        command=f"move the block {i} left", state=rng.standard_normal(6)
                        .astype(np.float32)) for i in range(size)]


@pytest.mark.parametrize("name", ["policy.pt2", "policy.pt"])
def test_exported_files_answer_like_the_reference(policy: ReferencePolicy, tmp_path: Path,
                                                  name: str) -> None:
    path = export_reference(policy, tmp_path / name,
                            "export" if name.endswith(".pt2") else "torchscript",
                            image_size=(24, 24))
    loaded = load_policy(str(path), device="cpu")
    assert isinstance(loaded, ExportedPolicy)
    assert (loaded.name, loaded.version, loaded.horizon, loaded.action_dim) == ("tiny", 4, 5, 3)
    for size in (1, 3):  # the batch size is not baked in
        obs = batch(size)
        np.testing.assert_allclose(loaded.infer(obs), policy.infer(obs), atol=1e-5)


def test_directory_with_config_and_safetensors(policy: ReferencePolicy, tmp_path: Path) -> None:
    root = save_directory(policy, tmp_path / "ckpt")
    assert sorted(p.name for p in root.iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_policy(str(root), device="cpu")
    obs = batch(2)
    np.testing.assert_allclose(loaded.infer(obs), policy.infer(obs), atol=1e-6)


def test_bad_directories_and_files_say_why(policy: ReferencePolicy, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match=r"has no config\.json"):
        load_policy(str(empty))
    root = save_directory(policy, tmp_path / "two")
    (root / "extra.safetensors").write_bytes((root / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"2 \.safetensors files"):
        load_policy(str(root))
    (root / "extra.safetensors").unlink()
    (root / "config.json").write_text('{"cameras": ["a"], "nonsense": 1}')
    with pytest.raises(ValueError, match="not a reference config"):
        load_policy(str(root))
    with pytest.raises(FileNotFoundError):
        load_policy(str(tmp_path / "missing.pt2"))


def test_an_export_without_vlabus_metadata_is_refused(policy: ReferencePolicy,
                                                      tmp_path: Path) -> None:
    import torch

    from vlabus.policy.exported import example_inputs

    program = torch.export.export(policy.module.eval(),
                                  example_inputs(policy.config, image_size=(24, 24)))
    torch.export.save(program, str(tmp_path / "bare.pt2"))
    with pytest.raises(ValueError, match=r"no vlabus\.json"):
        load_policy(str(tmp_path / "bare.pt2"))
