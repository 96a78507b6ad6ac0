"""Private local training for one federated round: DP-SGD with Opacus on the robot's buffer.

The policy's camera encoders and command embedding stay frozen; their features are computed
once per example, and the announced ``trainable`` tensors (the state embedding and the action
head: prefixes ``state.`` and ``head.``) are trained with per-example gradient clipping and
Gaussian noise (Opacus' ``make_private`` with Poisson sampling) to imitate the cloud's chunks.
The robot's privacy spent over all its rounds is tracked with Opacus' RDP accountant, whose
history is kept in ``state_dir/privacy.json``; a round that would take it past its budget is not
trained. Tensors under ``personal`` prefixes are trained too but kept in
``state_dir/personal.safetensors`` and never returned in the delta.

:func:`train` runs in the trainer process (:func:`lower_priority` as its initializer): nothing
here touches the control loop.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.fl.buffer import Example, sample
from vlabus.fl.delta import Delta, clip, select
from vlabus.fl.privacy import spent_epsilon, steps_per_round

TRAINABLE_PREFIXES = ("state.", "head.")
PRIVACY_FILE = "privacy.json"


@dataclass(frozen=True)
class TrainJob:
    """Everything one round's training needs, picklable for the trainer process."""

    base_path: str
    buffer_dir: str
    state_dir: str
    round: int
    examples: int
    batch_size: int
    epochs: int
    lr: float
    example_clip: float
    noise_multiplier: float
    delta: float
    update_clip: float
    budget_epsilon: float
    trainable: tuple[str, ...] = TRAINABLE_PREFIXES
    personal: tuple[str, ...] = ()
    seed: int = 0
    cpu_share: float = 0.5


@dataclass
class TrainResult:
    """``status``: ``trained``, ``budget_spent``, ``not_enough_data`` or ``unsupported``."""

    status: str
    delta: Delta = field(default_factory=dict)
    epsilon: float = 0.0
    examples: int = 0
    steps: int = 0
    seconds: float = 0.0
    loss_before: float = math.nan
    loss_after: float = math.nan
    norm: float = 0.0


def lower_priority(nice: int = 19, threads: int = 1) -> None:
    """Initializer of the trainer process: lowest CPU priority, one torch thread, so the
    control loop keeps its core."""
    os.nice(nice)
    import torch

    torch.set_num_threads(threads)


def load_history(state_dir: Path) -> list[tuple[float, float, int]]:
    path = state_dir / PRIVACY_FILE
    if not path.is_file():
        return []
    return [(float(s), float(q), int(n)) for s, q, n in json.loads(path.read_text())["history"]]


def save_history(state_dir: Path, history: list[tuple[float, float, int]], delta: float) -> None:
    path = state_dir / PRIVACY_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"history": history, "delta": delta,
                               "epsilon": spent_epsilon(history, delta)}))
    os.replace(tmp, path)


def _features(module: Any, examples: list[Example], config: Any) -> tuple[Any, Any, Any]:
    """Frozen features (cameras + command), states and flattened target chunks."""
    import torch

    from vlabus.policy.reference import tokenize

    feats, states, targets = [], [], []
    with torch.no_grad():
        for start in range(0, len(examples), 64):
            part = examples[start: start + 64]
            parts = [module.cameras[name](torch.from_numpy(np.stack(
                [ex.observation.images[name] for ex in part])).permute(0, 3, 1, 2).float()
                .div_(255.0)) for name in config.cameras]
            tokens: list[int] = []
            offsets: list[int] = []
            for ex in part:
                offsets.append(len(tokens))
                tokens.extend(tokenize(ex.observation.command, config.vocab))
            parts.append(module.text(torch.tensor(tokens, dtype=torch.long),
                                     torch.tensor(offsets, dtype=torch.long)))
            feats.append(torch.cat(parts, dim=1))
            states.append(torch.from_numpy(np.stack([ex.observation.state for ex in part])))
            targets.append(torch.from_numpy(np.stack([ex.action for ex in part]))
                           .reshape(len(part), -1))
    return torch.cat(feats), torch.cat(states).float(), torch.cat(targets).float()


def _head(module: Any) -> Any:
    import copy

    import torch
    from torch import nn

    class Head(nn.Module):
        """The trainable tail of the reference policy, parameter names unchanged."""

        def __init__(self) -> None:
            super().__init__()
            self.state = copy.deepcopy(module.state)
            self.head = copy.deepcopy(module.head)

        def forward(self, feats: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.head(torch.cat([feats, self.state(state)], dim=1)))

    return Head()


def _usable(examples: list[Example], state_dim: int, shape: tuple[int, int],
            cameras: tuple[str, ...]) -> list[Example]:
    return [ex for ex in examples if tuple(ex.action.shape) == shape
            and ex.observation.state.shape == (state_dim,)
            and all(name in ex.observation.images for name in cameras)]


def train(job: TrainJob) -> TrainResult:
    """One round of private training; see the module docstring."""
    with warnings.catch_warnings():
        # Expected here: Opacus' secure RNG needs torchcsprng (not installed; its Gaussian
        # noise comes from torch's generator), and the frozen features carry no gradient.
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        return _train(job)


def _train(job: TrainJob) -> TrainResult:
    import torch
    from opacus import PrivacyEngine
    from safetensors.numpy import load_file, save_file
    from torch.utils.data import DataLoader, TensorDataset

    from edge_agent.fl.personal import PERSONAL_FILE, overlay
    from vlabus.policy.reference import ReferencePolicy

    started = time.perf_counter()
    state_dir = Path(job.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    if any(not p.startswith(TRAINABLE_PREFIXES) for p in (*job.trainable, *job.personal)):
        return TrainResult("unsupported")
    history = load_history(state_dir)
    rate, steps = steps_per_round(job.examples, job.batch_size, job.epochs)
    planned = [*history, (job.noise_multiplier, rate, steps)]
    if spent_epsilon(planned, job.delta) > job.budget_epsilon:
        return TrainResult("budget_spent", epsilon=spent_epsilon(history, job.delta))
    policy = ReferencePolicy.load_safetensors(job.base_path, device="cpu")
    config = policy.config
    personal_path = state_dir / PERSONAL_FILE
    if job.personal and personal_path.is_file():
        overlay(policy, load_file(str(personal_path)))
    rng = np.random.default_rng([job.seed, job.round])
    drawn, _ = sample(Path(job.buffer_dir), job.examples, rng)
    examples = _usable(drawn, config.state_dim,
                       (config.horizon, config.action_dim), config.cameras)
    if len(examples) < job.examples:
        return TrainResult("not_enough_data", examples=len(examples),
                           epsilon=spent_epsilon(history, job.delta))
    torch.manual_seed(int(rng.integers(1 << 62)))
    feats, states, targets = _features(policy.module, examples, config)
    model = _head(policy.module).train()  # Opacus records activations in training mode only
    names = select(dict(model.named_parameters()), (*job.trainable, *job.personal))
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=job.lr)
    loader = DataLoader(TensorDataset(feats, states, targets), batch_size=job.batch_size)
    loss_fn = torch.nn.MSELoss()
    with torch.no_grad():
        before = float(loss_fn(model(feats, states), targets))
    engine = PrivacyEngine(accountant="rdp")
    private, optimizer, loader = engine.make_private(
        module=model, optimizer=optimizer, data_loader=loader,
        noise_multiplier=job.noise_multiplier, max_grad_norm=job.example_clip,
        poisson_sampling=True)
    done = 0
    for _ in range(job.epochs):
        for f, s, y in loader:
            tick = time.perf_counter()
            optimizer.zero_grad()
            if len(f):
                loss_fn(private(f, s), y).backward()
            optimizer.step()
            done += 1
            # CPU bound: rest in proportion to the work, so training takes at most cpu_share
            busy = time.perf_counter() - tick
            time.sleep(busy * (1 - job.cpu_share) / max(job.cpu_share, 1e-3))
    history.append((job.noise_multiplier, rate, done))
    save_history(state_dir, history, job.delta)
    private.disable_hooks()
    with torch.no_grad():
        after = float(loss_fn(model(feats, states), targets))
    trained = {n: p.detach().numpy().astype(np.float32) for n, p in model.named_parameters()}
    personal = select(trained, job.personal)
    if personal:
        tmp = state_dir / "personal.tmp"
        save_file({n: trained[n] for n in personal}, str(tmp))
        os.replace(tmp, personal_path)
    shared = [n for n in names if n not in personal]
    delta, size = clip({n: trained[n] - base[n].numpy() for n in shared}, job.update_clip)
    return TrainResult("trained", delta=delta, epsilon=spent_epsilon(history, job.delta),
                       examples=len(examples), steps=done,
                       seconds=time.perf_counter() - started, loss_before=before,
                       loss_after=after, norm=size)
