"""``--policy`` specifications: ``reference``, ``noop``, ``FILE.safetensors``, a directory with
``config.json`` and safetensors weights, a ``torch.export`` ``FILE.pt2``, a TorchScript
``FILE.pt``/``FILE.ts``, ``profile:NAME`` (a stand-in timed by a model profile, see
:mod:`vlabus.policy.profile`) or ``module:factory`` (docs/policies.md).
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

from vlabus.policy import Policy
from vlabus.policy.reference import ReferencePolicy

BUILTIN = {
    "reference": "vlabus.policy.reference:reference",
    "noop": "vlabus.policy.reference:noop",
}


def load_policy(spec: str, *, device: str = "auto") -> Policy:
    """Build a policy from ``"reference"``, ``"noop"``, ``"module:factory"``, a ``*.safetensors``
    path (reference weights), a directory (``config.json`` + safetensors), a ``torch.export``
    ``*.pt2`` or a TorchScript ``*.pt``/``*.ts`` file. A factory gets ``device=`` when it
    accepts it. Missing files raise ``OSError``; files of the wrong kind ``ValueError``."""
    if spec.endswith(".safetensors"):
        return ReferencePolicy.load_safetensors(spec, device=device)
    if spec.startswith("profile:"):
        from vlabus.policy.profile import profile_policy

        return profile_policy(spec.removeprefix("profile:"))
    from vlabus.policy import exported

    if Path(spec).is_dir():
        return exported.load_directory(spec, device=device)
    if spec.endswith(exported.EXPORT_SUFFIXES):
        return exported.load_exported(spec, device=device)
    if spec.endswith(exported.TORCHSCRIPT_SUFFIXES):
        return exported.load_torchscript(spec, device=device)
    target = BUILTIN.get(spec, spec)
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"policy {spec!r}: use reference, noop, FILE.safetensors, DIR "
                         "(config.json + safetensors), FILE.pt2, FILE.pt or module:factory")
    factory = getattr(importlib.import_module(module_name), attr)
    try:
        takes_device = "device" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature
        takes_device = False
    policy = factory(device=device) if takes_device else factory()
    if not callable(getattr(policy, "infer", None)):
        raise TypeError(f"{target} returned {type(policy).__name__}, which has no infer(batch)")
    return policy  # type: ignore[no-any-return]
