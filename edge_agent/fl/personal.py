"""A robot's personal tensors (never averaged): laid over every release it installs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from vlabus.policy import Policy

PERSONAL_FILE = "personal.safetensors"


def overlay(policy: Any, tensors: Mapping[str, Any]) -> None:
    """Copy ``tensors`` (name -> array) into ``policy.module`` in place (names must exist)."""
    import torch

    params = dict(policy.module.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(torch.as_tensor(value).reshape(params[name].shape))


def personal_loader(state_dir: Path) -> Callable[[Path], Policy]:
    """A model loader for the updater: the release from ``path`` with this robot's personal
    tensors from ``state_dir`` over it, when it has any."""

    def load(path: Path) -> Policy:
        from safetensors.numpy import load_file

        from vlabus.policy.reference import ReferencePolicy

        policy = ReferencePolicy.load_safetensors(path, device="cpu")
        personal = state_dir / PERSONAL_FILE
        if personal.is_file():
            overlay(policy, load_file(str(personal)))
        return policy

    return load
