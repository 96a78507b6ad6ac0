"""Task handlers: requests beyond per-step frames, served through the same queue.

A handler takes a :class:`~schemas.messages.TaskRequest` and returns a flat ``Params`` map
(str → str | int | float | bool) or raises :class:`TaskError` with a message for the robot.
Handlers run on the inference thread, so a slow one delays frames only by its own batch.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from schemas.messages import Scalar, TaskRequest

Result = dict[str, Scalar]
Handler = Callable[[TaskRequest], Result]
MAX_STEPS = 16
_SPLIT = re.compile(r"\s*(?:,|;|\bthen\b|\band then\b|\bafter that\b)\s*", re.IGNORECASE)


class TaskError(Exception):
    """The task was understood but cannot be done; the message goes back to the robot."""


def plan(request: TaskRequest) -> Result:
    """Split ``params["command"]`` into ordered sub-goals (``step_0`` … ``step_{n-1}``)."""
    command = request.params.get("command")
    if not isinstance(command, str) or not command.strip():
        raise TaskError("plan needs a non-empty string param 'command'")
    steps = [part.strip() for part in _SPLIT.split(command) if part and part.strip()]
    if len(steps) > MAX_STEPS:
        raise TaskError(f"plan has {len(steps)} steps, at most {MAX_STEPS}")
    result: Result = {"steps": len(steps)}
    result.update({f"step_{i}": step for i, step in enumerate(steps)})
    return result


def models_handler(models: dict[str, int]) -> Handler:
    """A ``models`` task: which models (and versions) this worker serves."""
    def handle(request: TaskRequest) -> Result:
        del request
        return dict(sorted(models.items()))
    return handle


def default_handlers(models: dict[str, int]) -> dict[str, Handler]:
    return {"plan": plan, "models": models_handler(models)}
