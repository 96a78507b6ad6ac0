"""The built-in torch policies (torch is imported lazily, where a policy runs).

Built in (the contract they follow is :mod:`vlabus.policy`):

* :class:`ReferencePolicy` — a small torch VLA: a conv encoder per camera, a hashed-token
  embedding of the command, a linear embedding of the state, and an MLP head producing the HxD
  chunk. Weights are seeded (deterministic for a seed) or loaded from safetensors — never
  pickle. ``width`` scales it (the robot runs a small one, the cloud a larger one).
* :class:`NoopPolicy` — zeros of the right shape without touching the inputs (benchmarks).

``infer`` of the built-ins is not thread-safe (it reuses one staging buffer per camera); run it
from one thread, as the worker's batch runner does.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vlabus.policy import FloatArray, Observation, PolicyInputError

if TYPE_CHECKING:
    import torch

MAX_TOKENS = 32
_TOKEN = re.compile(r"[a-z0-9]+")
_CONFIG_KEY = "vlabus.reference_policy"


def tokenize(command: str, vocab: int) -> list[int]:
    """Stable hashed tokens (CRC-32 of lowercase words, mod ``vocab``); at most MAX_TOKENS."""
    words = _TOKEN.findall(command.lower())[:MAX_TOKENS]
    return [zlib.crc32(word.encode()) % vocab for word in words]


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device {device!r}: use auto, cpu or cuda")
    return device


def default_threads() -> int:
    """CPU threads for torch in a serving process: every core but one, which is left to the
    event loop that verifies, decodes, encodes and signs (measured: with torch on both cores
    of a 2-core machine, batch inference and the loop slowed each other down)."""
    return max(1, (os.cpu_count() or 2) - 1)


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op CPU threads (``None``: :func:`default_threads`); returns it."""
    import torch

    count = default_threads() if threads is None else max(1, threads)
    torch.set_num_threads(count)
    return count


@dataclass(frozen=True)
class ReferenceConfig:
    """Shape of the reference policy. Saved into the safetensors metadata."""

    cameras: tuple[str, ...] = ("front",)
    state_dim: int = 14
    horizon: int = 16
    action_dim: int = 7
    width: int = 64
    vocab: int = 4096
    seed: int = 0
    name: str = "reference"
    version: int = 0
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ReferenceConfig:
        raw = json.loads(text)
        raw["cameras"] = tuple(raw["cameras"])
        return cls(**raw)


def _build_module(config: ReferenceConfig) -> torch.nn.Module:
    import torch
    from torch import nn

    width = config.width

    class CameraEncoder(nn.Module):
        """Patchify (4x4, stride 4), two strided 3x3 convs, global average pool → ``width``."""

        def __init__(self) -> None:
            super().__init__()
            c1, c2 = max(8, width // 4), max(8, width // 2)
            self.net = nn.Sequential(
                nn.Conv2d(3, c1, 4, stride=4), nn.GELU(),
                nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.GELU(),
                nn.Conv2d(c2, width, 3, stride=2, padding=1), nn.GELU(),
                nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)  # type: ignore[no-any-return]

    class ReferenceVLA(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cameras = nn.ModuleDict({name: CameraEncoder() for name in config.cameras})
            self.text = nn.EmbeddingBag(config.vocab, width, mode="mean")
            self.state = nn.Linear(config.state_dim, width)
            inputs = width * (len(config.cameras) + 2)
            self.head = nn.Sequential(
                nn.Linear(inputs, 2 * width), nn.GELU(),
                nn.Linear(2 * width, config.horizon * config.action_dim),
            )

        def forward(self, images: dict[str, torch.Tensor], tokens: torch.Tensor,
                    offsets: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
            # images arrive as uint8 NHWC; scaling on the device keeps host→device copies small
            feats = [self.cameras[name](images[name].permute(0, 3, 1, 2).float().div_(255.0))
                     for name in config.cameras]
            feats.append(self.text(tokens, offsets))
            feats.append(self.state(state))
            out = torch.tanh(self.head(torch.cat(feats, dim=1)))
            return out.view(-1, config.horizon, config.action_dim)

    return ReferenceVLA()


class ReferencePolicy:
    """The built-in VLA policy; see the module docstring. Construct with :meth:`seeded` or
    :meth:`load_safetensors`."""

    def __init__(self, config: ReferenceConfig, module: torch.nn.Module, device: str) -> None:
        import torch

        self.config = config
        self.name = config.name
        self.version = config.version
        self.horizon = config.horizon
        self.action_dim = config.action_dim
        self.device = torch.device(device)
        self._cuda = self.device.type == "cuda"
        self.module = module.to(self.device).eval()
        self._staging: dict[str, FloatArray] = {}  # per camera: uint8 (N, H, W, C), pinned on CUDA
        self._torch_staging: dict[str, torch.Tensor] = {}

    @classmethod
    def seeded(cls, config: ReferenceConfig | None = None, *, device: str = "auto",
               **overrides: Any) -> ReferencePolicy:
        """Deterministic weights for ``config.seed`` (the global torch RNG is left untouched)."""
        import torch

        config = config or ReferenceConfig()
        if overrides:
            config = ReferenceConfig(**{**asdict(config), **overrides})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            module = _build_module(config)
        return cls(config, module, resolve_device(device))

    @classmethod
    def load_safetensors(cls, path: str | Path, *, device: str = "auto") -> ReferencePolicy:
        """Load weights and config written by :meth:`save_safetensors` (strict key match)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        if _CONFIG_KEY not in metadata:
            raise ValueError(f"{path} has no {_CONFIG_KEY} metadata; not a reference policy file")
        config = ReferenceConfig.from_json(metadata[_CONFIG_KEY])
        module = _build_module(config)
        module.load_state_dict(load_file(str(path)), strict=True)
        return cls(config, module, resolve_device(device))

    def save_safetensors(self, path: str | Path) -> Path:
        """Write the weights (and the config as metadata) to ``path``."""
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}
        save_file(tensors, str(path), metadata={_CONFIG_KEY: self.config.to_json()})
        return Path(path)

    def infer(self, batch: Sequence[Observation]) -> FloatArray:
        """(B, H, D) float32 actions in [-1, 1]. Raises :class:`PolicyInputError` on a misfit."""
        import torch

        if not batch:
            return np.zeros((0, self.horizon, self.action_dim), np.float32)
        cfg = self.config
        images = {name: self._stage(name, batch) for name in cfg.cameras}
        tokens: list[int] = []
        offsets: list[int] = []
        state = np.empty((len(batch), cfg.state_dim), np.float32)
        for i, obs in enumerate(batch):
            offsets.append(len(tokens))
            tokens.extend(tokenize(obs.command, cfg.vocab))
            if obs.state.shape != (cfg.state_dim,):
                raise PolicyInputError(
                    f"state has shape {obs.state.shape}, policy takes ({cfg.state_dim},)")
            state[i] = obs.state
        dev = self.device
        with torch.inference_mode():
            out = self.module(
                images,
                torch.tensor(tokens, dtype=torch.long).to(dev, non_blocking=True),
                torch.tensor(offsets, dtype=torch.long).to(dev, non_blocking=True),
                torch.from_numpy(state).to(dev, non_blocking=True),
            )
            result: FloatArray = out.float().cpu().numpy()
            return result

    def _stage(self, camera: str, batch: Sequence[Observation]) -> torch.Tensor:
        """Copy each image view once, straight into a reused (pinned on CUDA) batch buffer."""
        import torch

        first = batch[0].images.get(camera)
        if first is None:
            raise PolicyInputError(f"observation has no camera {camera!r}; "
                                   f"policy takes {list(self.config.cameras)}")
        shape = first.shape
        if len(shape) != 3 or shape[2] != 3:
            raise PolicyInputError(f"camera {camera!r} is {shape}, policy takes HxWx3")
        buf = self._staging.get(camera)
        if buf is None or buf.shape[1:] != shape or buf.shape[0] < len(batch):
            rows = max(len(batch), 0 if buf is None else buf.shape[0])
            host = torch.empty((rows, *shape), dtype=torch.uint8, pin_memory=self._cuda)
            self._torch_staging[camera] = host
            buf = self._staging[camera] = host.numpy()
        for i, obs in enumerate(batch):
            image = obs.images.get(camera)
            if image is None or image.shape != shape:
                raise PolicyInputError(
                    f"camera {camera!r}: batch mixes shapes or misses it at item {i}")
            np.copyto(buf[i], image)
        host_tensor = self._torch_staging[camera][: len(batch)]
        if self._cuda:
            # the copy is queued on the stream; the buffer is reused only after .cpu() syncs
            return host_tensor.to(self.device, non_blocking=True)
        return host_tensor


class NoopPolicy:
    """Returns zeros of shape (B, H, D) without reading the inputs: the serving ceiling."""

    def __init__(self, horizon: int = 16, action_dim: int = 7, name: str = "noop") -> None:
        self.horizon = horizon
        self.action_dim = action_dim
        self.name = name
        self.version = 0

    def infer(self, batch: Sequence[Observation]) -> FloatArray:
        return np.zeros((len(batch), self.horizon, self.action_dim), np.float32)


def reference(device: str = "auto") -> ReferencePolicy:
    """Factory for ``--policy reference``: the seeded default reference policy."""
    return ReferencePolicy.seeded(device=device)


def noop(device: str = "auto") -> NoopPolicy:
    """Factory for ``--policy noop``."""
    del device
    return NoopPolicy()

