"""Model profiles and the stand-in policy that follows one: inference time t(batch) as data.

A profile is a JSON file (``vlabus/policy/profiles/NAME.json``, shipped in the package) that
says how long one batch of ``b`` observations takes on one device, how that table was made
(``measured`` is true only for tables timed on real hardware; estimates say so, with their
sources and method) and the shape of the action chunk the model returns.

:class:`ProfilePolicy` (``--policy profile:NAME`` or ``profile:PATH.json``) models the
*device*: ``infer(batch)`` blocks the calling thread for ``t(len(batch))`` (a sleep, which
releases the GIL the way a CUDA synchronise does), then returns a deterministic chunk computed
from each observation's state. It costs the host no CPU while "the GPU" runs, so a worker
serving it spends exactly the bus, queue and reply work a real GPU worker would, and the
device time is the profile's. It is for measuring schedulers and capacity, not for control.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from vlabus.policy import FloatArray, Observation, PolicyInputError

PACKAGE = "vlabus.policy.profiles"


@dataclass(frozen=True)
class Profile:
    """t(batch) for one model class on one device; see the module docstring."""

    name: str
    model: str
    device: str
    measured: bool
    method: str
    sources: tuple[str, ...]
    batch_ms: tuple[tuple[int, float], ...]
    horizon: int = 50
    action_dim: int = 14
    state_dim: int = 14
    cameras: tuple[str, ...] = ("front",)

    def __post_init__(self) -> None:
        sizes = [b for b, _ in self.batch_ms]
        if not sizes or sizes[0] != 1 or sizes != sorted(set(sizes)):
            raise ValueError(f"profile {self.name!r}: batch sizes must start at 1 and increase")
        if any(ms <= 0 for _, ms in self.batch_ms):
            raise ValueError(f"profile {self.name!r}: times must be positive")

    @property
    def max_batch(self) -> int:
        return self.batch_ms[-1][0]

    def time_ns(self, batch: int) -> int:
        """Modelled time of one batch of ``batch``: linear between listed sizes, and past the
        largest along the last segment's slope (never below the largest listed time)."""
        if batch < 1:
            raise ValueError("batch must be at least 1")
        points = self.batch_ms
        for (b0, t0), (b1, t1) in itertools.pairwise(points):
            if b0 <= batch <= b1:
                return round(1e6 * (t0 + (t1 - t0) * (batch - b0) / (b1 - b0)))
        if len(points) == 1:
            return round(1e6 * points[0][1] * batch)
        (b0, t0), (b1, t1) = points[-2], points[-1]
        return round(1e6 * max(t1, t1 + (t1 - t0) / (b1 - b0) * (batch - b1)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        try:
            table = data["batch_ms"]
            return cls(
                name=str(data["name"]), model=str(data["model"]), device=str(data["device"]),
                measured=bool(data["measured"]), method=str(data["method"]),
                sources=tuple(str(s) for s in data.get("sources", ())),
                batch_ms=tuple(sorted((int(b), float(ms)) for b, ms in table.items())),
                horizon=int(data.get("horizon", 50)),
                action_dim=int(data.get("action_dim", 14)),
                state_dim=int(data.get("state_dim", 14)),
                cameras=tuple(data.get("cameras", ("front",))))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a model profile: {exc!r}") from exc

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "device": self.device,
                "measured": self.measured, "method": self.method, "sources": list(self.sources),
                "horizon": self.horizon, "action_dim": self.action_dim,
                "state_dim": self.state_dim, "cameras": list(self.cameras),
                "batch_ms": {str(b): round(ms, 3) for b, ms in self.batch_ms}}


def available() -> list[str]:
    """Names of the profiles shipped in the package."""
    return sorted(entry.name.removesuffix(".json")
                  for entry in resources.files(PACKAGE).iterdir()
                  if entry.name.endswith(".json"))


def load_profile(name_or_path: str) -> Profile:
    """A shipped profile by name, or a profile file by path (``*.json``)."""
    if name_or_path.endswith(".json"):
        text = Path(name_or_path).read_text(encoding="utf-8")
    else:
        entry = resources.files(PACKAGE) / f"{name_or_path}.json"
        if not entry.is_file():
            raise ValueError(f"no model profile {name_or_path!r}; shipped: {available()}")
        text = entry.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"profile {name_or_path!r} is not JSON: {exc}") from exc
    return Profile.from_dict(data)


@dataclass(frozen=True)
class _Shape:
    """What the worker's warm-up reads (``config.cameras``, ``config.state_dim``)."""

    cameras: tuple[str, ...]
    state_dim: int


class ProfilePolicy:
    """A stand-in whose ``infer`` takes the profile's t(batch); see the module docstring."""

    version = 0

    def __init__(self, profile: Profile, *, name: str | None = None) -> None:
        self.profile = profile
        self.name = name or profile.name
        self.config = _Shape(profile.cameras, profile.state_dim)
        rng = np.random.default_rng(0)
        self._mix = rng.normal(0.0, 0.3, (profile.state_dim, profile.action_dim)).astype(
            np.float32)
        self._ramp = np.linspace(0.0, 1.0, profile.horizon, dtype=np.float32)[:, None]
        self.device_ns = 0  # modelled device time of every batch run so far
        self.batches = 0

    def infer(self, batch: Sequence[Observation]) -> FloatArray:
        """``(len(batch), H, D)`` chunks after blocking for the profile's time."""
        if not batch:
            raise PolicyInputError("empty batch")
        duration = self.profile.time_ns(len(batch))
        until = time.perf_counter_ns() + duration
        states = np.zeros((len(batch), self.profile.state_dim), np.float32)
        for i, obs in enumerate(batch):
            state = np.asarray(obs.state, np.float32).reshape(-1)[: self.profile.state_dim]
            states[i, : state.size] = state
        # each step of the chunk moves further along the state's projection
        chunks = np.tanh(states @ self._mix)[:, None, :] * self._ramp[None, :, :]
        remaining = until - time.perf_counter_ns()
        if remaining > 0:
            time.sleep(remaining / 1e9)
        self.device_ns += duration
        self.batches += 1
        out: FloatArray = chunks.astype(np.float32)
        return out


def profile_policy(spec: str) -> ProfilePolicy:
    """The policy for ``--policy profile:NAME`` (or ``profile:PATH.json``)."""
    return ProfilePolicy(load_profile(spec))
