"""Topic names (MQTT; the ZeroMQ hub maps the same names).

    vla/v1/{robot_id}/frame      robot -> cloud, QoS 0, expires with the deadline
    vla/v1/{robot_id}/task       robot -> cloud, QoS 1
    vla/v1/{robot_id}/action     cloud -> robot, QoS 1 (actions and task results)
    vla/v1/{robot_id}/status     retained birth/death of the robot
    vla/v1/{robot_id}/session    robot -> pool, QoS 1: signed session offer (all workers read)
    vla/v1/{robot_id}/checkpoint robot's signed checkpoints of its session-mode messages
    vla/v1/workers/{worker_id}/status   retained birth/death of a worker
    vla/v1/workers/{worker_id}/checkpoint  a worker's signed checkpoints
    vla/v1/models/{model}/manifest      signed release manifest, retained
    vla/v1/models/{model}/chunk         release chunks
    vla/v1/models/{model}/fl-round      federated round announcement, retained
    vla/v1/models/{model}/fl-result     what a federated round came to, retained
    vla/v1/{robot_id}/fl-update         robot -> coordinator: update manifest and chunks

Workers read frames and tasks through ``$share/{group}/...``.
"""

from __future__ import annotations

import re

from schemas.errors import SchemaError

PREFIX = "vla/v1"
RESERVED_IDS = frozenset({"workers", "models"})
_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

ALL_FRAMES = f"{PREFIX}/+/frame"
ALL_TASKS = f"{PREFIX}/+/task"
ALL_MODELS = f"{PREFIX}/models/#"
ALL_WORKER_STATUS = f"{PREFIX}/workers/+/status"
#: Session offers: every worker of a pool reads them (not shared: each needs the key).
ALL_SESSION_OFFERS = f"{PREFIX}/+/session"
ALL_FL_UPDATES = f"{PREFIX}/+/fl-update"


def check_id(value: str) -> str:
    """Return ``value`` if it is a valid robot or worker id (lowercase, digits, dashes)."""
    if not _ID.match(value) or value in RESERVED_IDS:
        raise SchemaError(f"invalid id {value!r}: lowercase letters, digits and dashes", "id")
    return value


def check_name(value: str) -> str:
    """Return ``value`` if it is a valid model name."""
    if not _NAME.match(value):
        raise SchemaError(f"invalid name {value!r}", "name")
    return value


MAX_TOPIC_BYTES = 65535  # MQTT's UTF-8 string limit


def topic_name_problem(topic: str) -> str | None:
    """Why ``topic`` may not be published to, or None. MQTT 5 (4.7.3, 1.5.4): not empty, no
    wildcard, no NUL, UTF-8 of at most 65,535 bytes. Every adapter checks before sending, so a
    bad name fails the call instead of making the broker drop the connection."""
    if not topic:
        return "is empty"
    if "+" in topic or "#" in topic:
        return "contains a wildcard"
    return _string_problem(topic)


def topic_filter_problem(pattern: str) -> str | None:
    """Why ``pattern`` may not be subscribed to, or None. MQTT 5 (4.7.1): not empty, ``#``
    only as the whole last level, ``+`` only as a whole level, no NUL, UTF-8 of at most
    65,535 bytes. ``$share/...`` is refused: the Transport API takes the group separately."""
    if not pattern:
        return "is empty"
    if pattern.startswith("$share/"):
        return "is a shared subscription: pass the group as group="
    if "+" in pattern or "#" in pattern:
        levels = pattern.split("/")
        for index, level in enumerate(levels):
            if "#" in level and (level != "#" or index != len(levels) - 1):
                return "has '#' other than as the whole last level"
            if "+" in level and level != "+":
                return "has '+' other than as a whole level"
    return _string_problem(pattern)


def group_problem(group: str) -> str | None:
    """Why ``group`` may not name a shared subscription (``$share/GROUP/...``), or None."""
    if any(c in group for c in "/+#\0"):
        return f"has the invalid group {group!r} ('/', '+', '#' or NUL)"
    return None


def _string_problem(text: str) -> str | None:
    if "\0" in text:
        return "contains NUL"
    if text.isascii():
        size = len(text)
    else:
        try:
            size = len(text.encode())
        except UnicodeEncodeError:
            return "is not valid UTF-8"
    return f"is {size} bytes, over {MAX_TOPIC_BYTES}" if size > MAX_TOPIC_BYTES else None


def frame_topic(robot_id: str) -> str:
    return f"{PREFIX}/{check_id(robot_id)}/frame"


def task_topic(robot_id: str) -> str:
    return f"{PREFIX}/{check_id(robot_id)}/task"


def action_topic(robot_id: str) -> str:
    return f"{PREFIX}/{check_id(robot_id)}/action"


def robot_status_topic(robot_id: str) -> str:
    return f"{PREFIX}/{check_id(robot_id)}/status"


def decision_topic(robot_id: str) -> str:
    """Where a robot's black box records its decisions (a recording channel, not published)."""
    return f"{PREFIX}/{check_id(robot_id)}/decision"


def session_topic(robot_id: str) -> str:
    """Where a robot offers its session keys to its worker pool (``security.session``)."""
    return f"{PREFIX}/{check_id(robot_id)}/session"


def checkpoint_topic(robot_id: str) -> str:
    """Where a robot publishes the signed checkpoints of its session-mode messages."""
    return f"{PREFIX}/{check_id(robot_id)}/checkpoint"


def worker_checkpoint_topic(worker_id: str) -> str:
    return f"{PREFIX}/workers/{check_id(worker_id)}/checkpoint"


def worker_status_topic(worker_id: str) -> str:
    return f"{PREFIX}/workers/{check_id(worker_id)}/status"


def model_manifest_topic(model: str) -> str:
    return f"{PREFIX}/models/{check_name(model)}/manifest"


def model_chunk_topic(model: str) -> str:
    return f"{PREFIX}/models/{check_name(model)}/chunk"


def fl_round_topic(model: str) -> str:
    return f"{PREFIX}/models/{check_name(model)}/fl-round"


def fl_result_topic(model: str) -> str:
    return f"{PREFIX}/models/{check_name(model)}/fl-result"


def fl_update_topic(robot_id: str) -> str:
    return f"{PREFIX}/{check_id(robot_id)}/fl-update"


def shared(group: str, pattern: str) -> str:
    """The MQTT shared-subscription form of ``pattern`` for worker pool ``group``."""
    return f"$share/{check_id(group)}/{pattern}"


def robot_of(topic: str) -> str | None:
    """The robot id of a per-robot topic, or None for worker and model topics."""
    parts = topic.split("/")
    if len(parts) == 4 and f"{parts[0]}/{parts[1]}" == PREFIX and parts[2] not in RESERVED_IDS:
        return parts[2]
    return None


def matches(pattern: str, topic: str) -> bool:
    """MQTT topic matching with ``+`` (one level) and ``#`` (the rest). As in MQTT (5.0,
    4.7.2), a pattern that starts with a wildcard does not match a topic starting with ``$``:
    ``#`` is not ``$share/...`` nor ``$SYS/...``."""
    if topic.startswith("$") and pattern[:1] in ("#", "+"):
        return False
    pat = pattern.split("/")
    top = topic.split("/")
    for i, part in enumerate(pat):
        if part == "#":
            return True
        if i >= len(top) or (part != "+" and part != top[i]):
            return False
    return len(pat) == len(top)
