"""Which openpi observation keys become which vlabus cameras, state and command.

A mapping is explicit: ``KEY=camera:NAME``, ``KEY=state`` (several state keys are
concatenated in the order given) and ``KEY=command``. A KEY is looked up as a literal key of the
observation first (DROID and LIBERO use flat keys such as ``observation/image``), then as a
``/``-separated path into nested maps (ALOHA's ``images/cam_high``). Presets hold the key names
of openpi's own examples (docs/openpi.md).

Images may arrive HxWxC (DROID, LIBERO) or CxHxW (ALOHA) uint8 with 1 or 3 channels; they are
handed on HxWxC. The state becomes a float32 vector.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas.messages import MAX_CAMERAS, MAX_COMMAND
from vlabus.policy import Observation

MAX_STATE = 4096


class MappingError(ValueError):
    """An observation does not hold what the mapping asks for (the message names the key)."""


@dataclass(frozen=True)
class KeyMap:
    """openpi key -> camera name; state keys in order; the command key."""

    cameras: dict[str, str] = field(default_factory=dict)
    state: tuple[str, ...] = ()
    command: str | None = None

    def describe(self) -> dict[str, str]:
        out = {key: f"camera:{name}" for key, name in self.cameras.items()}
        out.update(dict.fromkeys(self.state, "state"))
        if self.command is not None:
            out[self.command] = "command"
        return out


PRESETS: dict[str, list[str]] = {
    # openpi examples/aloha_real: images CxHxW uint8, a 14-dof state, the prompt
    "aloha": ["images/cam_high=camera:cam_high", "images/cam_left_wrist=camera:cam_left_wrist",
              "images/cam_right_wrist=camera:cam_right_wrist", "state=state",
              "prompt=command"],
    # openpi examples/droid: flat keys, HxWx3 images, 7 joints + 1 gripper
    "droid": ["observation/exterior_image_1_left=camera:exterior_image_1_left",
              "observation/wrist_image_left=camera:wrist_image_left",
              "observation/joint_position=state", "observation/gripper_position=state",
              "prompt=command"],
    # openpi examples/libero: flat keys, HxWx3 images, an 8-dim state
    "libero": ["observation/image=camera:image", "observation/wrist_image=camera:wrist_image",
               "observation/state=state", "prompt=command"],
}


def parse_map(items: Iterable[str], preset: str | None = None) -> KeyMap:
    """Build a :class:`KeyMap` from a preset and ``KEY=SOURCE`` items. An item replaces the
    preset's entry for the same KEY, and for the same command or camera name. Raises
    :class:`MappingError` for a malformed item."""
    entries: dict[str, str] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise MappingError(f"unknown preset {preset!r}; one of {sorted(PRESETS)}")
        entries.update(_split(item) for item in PRESETS[preset])
    from_preset = set(entries)
    for key, source in map(_split, items):
        if source == "command" or source.startswith("camera:"):
            # the user's item replaces the preset's key for the same command or camera
            entries = {k: v for k, v in entries.items() if v != source or k not in from_preset}
        entries[key] = source
        from_preset.discard(key)
    cameras: dict[str, str] = {}
    state: list[str] = []
    command = None
    for key, source in entries.items():
        if source.startswith("camera:") and source[7:]:
            cameras[key] = source[7:]
        elif source == "state":
            state.append(key)
        elif source == "command":
            if command is not None:
                raise MappingError(f"two keys map to the command: {command!r} and {key!r}")
            command = key
        else:
            raise MappingError(f"{key}={source}: SOURCE is camera:NAME, state or command")
    if not cameras:
        raise MappingError("the mapping names no camera (KEY=camera:NAME)")
    if len(cameras) > MAX_CAMERAS:
        raise MappingError(f"{len(cameras)} cameras, at most {MAX_CAMERAS}")
    if len(set(cameras.values())) != len(cameras):
        raise MappingError("two keys map to the same camera name")
    return KeyMap(cameras, tuple(state), command)


def _split(item: str) -> tuple[str, str]:
    key, sep, source = item.partition("=")
    if not sep or not key or not source:
        raise MappingError(f"--map {item!r}: use KEY=camera:NAME, KEY=state or KEY=command")
    return key, source


def lookup(observation: Mapping[str, Any], key: str) -> Any:
    """The value at ``key``: a literal key first, else a ``/`` path through nested maps."""
    if key in observation:
        return observation[key]
    node: Any = observation
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            known = sorted(map(str, observation))
            raise MappingError(f"observation has no {key!r} (keys: {known})")
        node = node[part]
    return node


def to_hwc(value: Any, key: str) -> np.ndarray[Any, Any]:
    """A uint8 HxWxC image from HxWxC, CxHxW or HxW; raises :class:`MappingError`."""
    if not isinstance(value, np.ndarray) or value.dtype != np.uint8:
        kind = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
        raise MappingError(f"{key}: images are uint8 arrays, got {kind}")
    if value.ndim == 2:
        return value[:, :, None]
    if value.ndim != 3:
        raise MappingError(f"{key}: image of shape {value.shape}, expected HxWxC or CxHxW")
    if value.shape[-1] not in (1, 3) and value.shape[0] in (1, 3):
        value = np.transpose(value, (1, 2, 0))
    if value.shape[-1] not in (1, 3):
        raise MappingError(f"{key}: image of shape {value.shape} has no 1- or 3-channel axis")
    return np.ascontiguousarray(value)


def observation_of(raw: Any, keymap: KeyMap, default_command: str = "") -> Observation:
    """The vlabus observation for one openpi observation map."""
    if not isinstance(raw, Mapping):
        raise MappingError(f"an observation is a map, got {type(raw).__name__}")
    images = {name: to_hwc(lookup(raw, key), key) for key, name in keymap.cameras.items()}
    parts = []
    for key in keymap.state:
        value = lookup(raw, key)
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise MappingError(f"{key}: state must be numbers, got {array.dtype}")
        parts.append(array.astype(np.float32).reshape(-1))
    state = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if state.size > MAX_STATE or not np.isfinite(state).all():
        raise MappingError(f"state of {state.size} values must be finite and at most {MAX_STATE}")
    command = default_command
    if keymap.command is not None:
        value = lookup(raw, keymap.command)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if not isinstance(value, str):
            raise MappingError(f"{keymap.command}: the command is a string")
        command = value
    if len(command) > MAX_COMMAND:
        raise MappingError(f"command of {len(command)} characters, at most {MAX_COMMAND}")
    return Observation(images=images, command=command, state=state)
