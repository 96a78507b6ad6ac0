"""Policies from files made elsewhere: a ``torch.export`` program (``.pt2``), a TorchScript
module (``.pt``, ``.ts``), or a directory holding ``config.json`` and safetensors weights of the
reference architecture. Nothing is fetched from a network.

Exported and TorchScript modules follow the reference policy's forward contract, so one batching
path serves them all::

    forward(images: dict[str, uint8 (B, H, W, 3)], tokens: int64 (T,), offsets: int64 (B,),
            state: float32 (B, S)) -> float (B, horizon, action_dim)

``tokens``/``offsets`` are the command's hashed words as ``torch.nn.EmbeddingBag`` takes them
(:func:`vlabus.policy.reference.tokenize`). The file carries ``vlabus.json`` (a
:class:`~vlabus.policy.reference.ReferenceConfig` as JSON: cameras, state size, vocabulary,
horizon, action size, name, version) as an extra file; :func:`export_reference` writes both.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from vlabus.policy.reference import ReferenceConfig, ReferencePolicy, resolve_device

if TYPE_CHECKING:
    import torch

EXTRA = "vlabus.json"
CONFIG_FILE = "config.json"
EXPORT_SUFFIXES = (".pt2",)
TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".torchscript")


class ExportedPolicy(ReferencePolicy):
    """A reference-contract module loaded from a file; inference as :class:`ReferencePolicy`."""

    def __init__(self, config: ReferenceConfig, module: Any, device: str) -> None:
        import torch

        # an exported program's module cannot switch train/eval mode: it was traced in eval
        self.config = config
        self.name = config.name
        self.version = config.version
        self.horizon = config.horizon
        self.action_dim = config.action_dim
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        self.module = module.to(self.device)
        self._staging = {}
        self._torch_staging = {}


def _config_from(text: str, source: object) -> ReferenceConfig:
    try:
        return ReferenceConfig.from_json(text)
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"{source}: {EXTRA}/{CONFIG_FILE} is not a reference config: {exc}") \
            from exc


def load_exported(path: str | Path, *, device: str = "auto") -> ExportedPolicy:
    """A ``torch.export`` ``.pt2`` file holding ``vlabus.json``."""
    import torch

    extra = {EXTRA: ""}
    program = torch.export.load(str(path), extra_files=extra)
    if not extra[EXTRA]:
        raise ValueError(f"{path} has no {EXTRA} extra file; write it with export_reference()")
    config = _config_from(extra[EXTRA], path)
    return ExportedPolicy(config, program.module(), resolve_device(device))


def load_torchscript(path: str | Path, *, device: str = "auto") -> ExportedPolicy:
    """A TorchScript file holding ``vlabus.json`` (torch 2.13 deprecates TorchScript; a
    ``.pt2`` from ``torch.export`` is the lasting format)."""
    import torch

    extra = {EXTRA: ""}
    resolved = resolve_device(device)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
        module = torch.jit.load(  # type: ignore[no-untyped-call]
            str(path), map_location=resolved, _extra_files=extra)
    if not extra[EXTRA]:
        raise ValueError(f"{path} has no {EXTRA} extra file; write it with export_reference()")
    return ExportedPolicy(_config_from(extra[EXTRA], path), module.eval(), resolved)


def load_directory(path: str | Path, *, device: str = "auto") -> ReferencePolicy:
    """``config.json`` (reference config) plus exactly one ``*.safetensors`` weights file."""
    from safetensors.torch import load_file

    from vlabus.policy.reference import _build_module

    root = Path(path)
    config_path = root / CONFIG_FILE
    if not config_path.is_file():
        raise ValueError(f"{root} has no {CONFIG_FILE}")
    weights = sorted(root.glob("*.safetensors"))
    if len(weights) != 1:
        raise ValueError(f"{root} holds {len(weights)} .safetensors files, expected one")
    config = _config_from(config_path.read_text(), config_path)
    module = _build_module(config)
    module.load_state_dict(load_file(str(weights[0])), strict=True)
    return ReferencePolicy(config, module, resolve_device(device))


def save_directory(policy: ReferencePolicy, path: str | Path) -> Path:
    """Write ``config.json`` and ``model.safetensors`` for :func:`load_directory`."""
    from safetensors.torch import save_file

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    (root / CONFIG_FILE).write_text(json.dumps(json.loads(policy.config.to_json()), indent=1))
    tensors = {k: v.detach().cpu().contiguous() for k, v in policy.module.state_dict().items()}
    save_file(tensors, str(root / "model.safetensors"))
    return root


def example_inputs(config: ReferenceConfig, batch: int = 2,
                   image_size: tuple[int, int] = (224, 224)) -> tuple[Any, ...]:
    """Inputs of the forward contract, for tracing or exporting a module."""
    import torch

    height, width = image_size
    images = {name: torch.zeros(batch, height, width, 3, dtype=torch.uint8)
              for name in config.cameras}
    tokens = torch.zeros(2 * batch, dtype=torch.long)
    offsets = torch.arange(0, 2 * batch, 2, dtype=torch.long)
    state = torch.zeros(batch, config.state_dim, dtype=torch.float32)
    return images, tokens, offsets, state


def export_reference(policy: ReferencePolicy, path: str | Path,
                     fmt: Literal["export", "torchscript"] = "export", *,
                     image_size: tuple[int, int] = (224, 224)) -> Path:
    """Write ``policy`` (or any module with the reference forward contract, on CPU) as a
    ``torch.export`` program or a TorchScript trace. Batch size and token count stay dynamic;
    the camera image size (height, width) is fixed at ``image_size``, as the robot sends it."""
    import torch

    module: torch.nn.Module = policy.module.cpu().eval()
    inputs = example_inputs(policy.config, image_size=image_size)
    meta = {EXTRA: policy.config.to_json()}
    if fmt == "export":
        batch = torch.export.Dim("batch", min=1, max=4096)
        count = torch.export.Dim("tokens", min=1, max=1 << 20)
        shapes = ({name: {0: batch} for name in policy.config.cameras}, {0: count}, {0: batch},
                  {0: batch})
        program = torch.export.export(module, inputs, dynamic_shapes=shapes)
        torch.export.save(program, str(path), extra_files=meta)
    else:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`torch.jit", DeprecationWarning)
            traced = torch.jit.trace(module, inputs, strict=False)  # type: ignore[no-untyped-call]
            torch.jit.save(traced, str(path), _extra_files=meta)
    policy.module.to(policy.device)
    return Path(path)
