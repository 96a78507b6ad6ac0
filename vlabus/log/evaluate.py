"""Run a policy on the frames of a recording and compare its actions with the recorded ones.

A recorded action answers the frame with the same correlation id (``corr``), or, when either
has none, the same robot and step. Only frames with a recorded answer are run. Where chunk
shapes differ, the overlapping HxD block is compared and the pair is counted in
``shape_mismatch``. Errors are per element: mean absolute error, RMSE and max, per robot and
overall.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from schemas.arrays import unpack_array
from schemas.errors import SchemaError, WireError
from schemas.messages import Action, Frame
from security.keys import Keyring
from security.seal import Opener
from vlabus.envelope import Header
from vlabus.log.reader import iter_log
from vlabus.policy import Observation, Policy, PolicyInputError
from vlabus.wire import Decoder


@dataclass
class ErrorStats:
    pairs: int = 0
    elements: int = 0
    abs_sum: float = 0.0
    sq_sum: float = 0.0
    max_abs: float = 0.0
    shape_mismatch: int = 0

    def add(self, predicted: np.ndarray[Any, Any], recorded: np.ndarray[Any, Any]) -> None:
        if predicted.shape != recorded.shape:
            self.shape_mismatch += 1
            h = min(predicted.shape[0], recorded.shape[0])
            d = min(predicted.shape[1], recorded.shape[1])
            predicted, recorded = predicted[:h, :d], recorded[:h, :d]
        diff = np.abs(predicted.astype(np.float64) - recorded.astype(np.float64))
        self.pairs += 1
        self.elements += diff.size
        self.abs_sum += float(diff.sum())
        self.sq_sum += float((diff * diff).sum())
        if diff.size:
            self.max_abs = max(self.max_abs, float(diff.max()))

    def as_dict(self) -> dict[str, Any]:
        n = max(self.elements, 1)
        return {"count": self.pairs, "elements": self.elements,
                "mean_abs_error": self.abs_sum / n, "rmse": float(np.sqrt(self.sq_sum / n)),
                "max_abs_error": self.max_abs, "shape_mismatch": self.shape_mismatch}


@dataclass
class Evaluation:
    frames: int = 0
    actions: int = 0
    unmatched_frames: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    overall: ErrorStats = field(default_factory=ErrorStats)
    robots: dict[str, ErrorStats] = field(default_factory=lambda: defaultdict(ErrorStats))

    def as_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "actions": self.actions,
                "unmatched_frames": self.unmatched_frames, "rejected": dict(self.rejected),
                "overall": self.overall.as_dict(),
                "robots": {r: s.as_dict() for r, s in sorted(self.robots.items())}}


def _key(header: Header, robot: str, step: int) -> tuple[str, ...]:
    return ("corr", header.corr) if header.corr else ("step", robot, str(step))


def evaluate(path: str | Path, policy: Policy, *, keyring: Keyring | None = None,
             topics: Iterable[str] | None = None, batch_size: int = 16,
             opener: Opener | None = None) -> Evaluation:
    """Decode the log (verifying with ``keyring`` when given), run ``policy`` on every frame
    that has a recorded action, and accumulate the differences. Sealed frames need ``opener``."""
    decoder = Decoder(keyring or Keyring(), opener=opener)
    result = Evaluation()
    frames: dict[tuple[str, ...], Frame] = {}
    recorded: dict[tuple[str, ...], Action] = {}
    for record in iter_log(path, topics=topics):
        try:
            if keyring is not None:
                received = decoder.decode(record.data)
                header, message = received.header, received.message
            else:
                header, message = decoder.parse_unverified(record.data)
        except WireError as exc:
            result.rejected[exc.reason.value] += 1
            continue
        if isinstance(message, Frame):
            result.frames += 1
            frames[_key(header, message.robot_id, message.step)] = message
        elif isinstance(message, Action):
            result.actions += 1
            # the first answer counts: a QoS 1 redelivery or a retry may repeat it
            recorded.setdefault(_key(header, message.robot_id, message.step), message)
    pairs = [(frames[k], recorded[k]) for k in frames if k in recorded]
    result.unmatched_frames = len(frames) - len(pairs)
    for start in range(0, len(pairs), batch_size):
        _run_batch(policy, pairs[start: start + batch_size], result)
    return result


def _run_batch(policy: Policy, pairs: list[tuple[Frame, Action]], result: Evaluation) -> None:
    batch, kept = [], []
    for frame, action in pairs:
        try:
            batch.append(Observation.from_frame(frame))
            kept.append((frame, action))
        except SchemaError as exc:
            result.rejected[exc.reason.value] += 1
        except PolicyInputError:
            result.rejected["policy_input"] += 1
    if not batch:
        return
    predicted = np.asarray(policy.infer(batch))
    if predicted.ndim != 3 or predicted.shape[0] != len(batch):
        raise ValueError(f"policy returned shape {predicted.shape} for a batch of {len(batch)}")
    for chunk, (frame, action) in zip(predicted, kept, strict=True):
        try:
            target = unpack_array(action.actions, path="actions")
        except SchemaError as exc:
            result.rejected[exc.reason.value] += 1
            continue
        target = target.reshape(-1, target.shape[-1]) if target.ndim else target.reshape(1, 1)
        result.overall.add(chunk, target)
        result.robots[frame.robot_id].add(chunk, target)
