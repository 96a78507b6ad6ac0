"""Policies that ``vlabus worker --policy`` and ``vlabus log evaluate --policy`` load by
``tests.support.policies:FACTORY`` in the tests (real command lines, test behaviour)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vlabus.policy import Observation


class StepPolicy:
    """Answers every frame with a 4x7 chunk filled with its step (read from state[0])."""

    def infer(self, batch: Sequence[Observation]) -> np.ndarray:
        return np.stack([np.full((4, 7), obs.state[0], np.float32) for obs in batch])


def step_policy() -> StepPolicy:
    return StepPolicy()


class StuckPolicy:
    """Blocks inside ``infer`` (a batch that never finishes) after touching a marker file
    named by ``VLABUS_TEST_MARKER``."""

    name = "stuck"
    version = 1

    def __init__(self) -> None:
        self.marker = Path(os.environ["VLABUS_TEST_MARKER"])

    def warm_up(self) -> None:
        return

    def infer(self, batch: Sequence[Observation]) -> np.ndarray:
        self.marker.write_text(str(len(batch)))
        threading.Event().wait(120)  # stands for a long GPU batch; the test kills us first
        return np.zeros((len(batch), 1, 1), np.float32)


def stuck() -> StuckPolicy:
    return StuckPolicy()


class HangingPolicy:
    """A model of ``seconds`` per batch (on the inference thread, like a real one) that hangs
    inside ``infer`` while ``hang`` is set, until ``release`` is set."""

    name = "noop"
    version = 1

    def __init__(self, seconds: float = 0.002, horizon: int = 8, dim: int = 7) -> None:
        self.seconds = seconds
        self.horizon = horizon
        self.dim = dim
        self.hang = threading.Event()
        self.release = threading.Event()
        self.hung = threading.Event()  # set once a batch is hanging

    def infer(self, batch: Sequence[Observation]) -> np.ndarray:
        if self.hang.is_set():
            self.hung.set()
            self.release.wait(60)
        threading.Event().wait(self.seconds)
        return np.zeros((len(batch), self.horizon, self.dim), np.float32)
