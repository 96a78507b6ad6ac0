"""The openpi gateway's pure parts: openpi's MessagePack-with-NumPy (checked), and the mapping
from observation keys to cameras, state and command (presets, literal and nested keys)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from vlabus.gateway.mapping import MappingError, observation_of, parse_map
from vlabus.gateway.npwire import NpWireError, packb, unpackb

msgpack_numpy = pytest.importorskip("openpi_client.msgpack_numpy")


def test_arrays_cross_with_openpis_own_helpers() -> None:
    obs = {"state": np.arange(8, dtype=np.float32), "images": {"a": np.zeros((3, 4, 5), np.uint8)},
           "prompt": "wipe", "scalar": np.float64(2.5)}
    got = unpackb(msgpack_numpy.packb(obs))
    np.testing.assert_array_equal(got["state"], obs["state"])
    assert got["images"]["a"].shape == (3, 4, 5)
    assert got["scalar"] == 2.5
    back = msgpack_numpy.unpackb(packb({"actions": np.ones((50, 14), np.float32)}))
    assert back["actions"].shape == (50, 14)
    assert back["actions"].dtype == np.float32


@pytest.mark.parametrize(("array", "message"), [
    ({b"__ndarray__": True, b"data": b"x" * 8, b"dtype": "|O", b"shape": [1]}, "not a plain"),
    ({b"__ndarray__": True, b"data": b"x" * 16, b"dtype": "<c16", b"shape": [1]}, "not a plain"),
    ({b"__ndarray__": True, b"data": b"x" * 7, b"dtype": "<f4", b"shape": [2]}, "needs 8 bytes"),
    ({b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-1]}, "bad shape"),
    ({b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [1] * 9}, "bad shape"),
    ({b"__ndarray__": True, b"data": "text", b"dtype": "<f4", b"shape": [1]}, "not bytes"),
])
def test_arrays_that_could_hurt_are_refused(array: dict[bytes, object], message: str) -> None:
    with pytest.raises(NpWireError, match=message):
        unpackb(msgpack.packb({"state": array}))


def test_garbage_is_a_clear_error() -> None:
    with pytest.raises(NpWireError, match="not MessagePack"):
        unpackb(b"\xc1\xc1\xc1")
    with pytest.raises(NpWireError, match="not MessagePack"):
        unpackb(msgpack.packb({"a": 1}) + b"trailing")


def aloha() -> dict[str, object]:
    return {"images": {name: np.full((3, 6, 8), i, np.uint8) for i, name in
                       enumerate(["cam_high", "cam_left_wrist", "cam_right_wrist"])},
            "state": np.arange(14, dtype=np.float64), "prompt": "fold"}


def test_aloha_preset_reads_nested_keys_and_chw_images() -> None:
    obs = observation_of(aloha(), parse_map([], "aloha"))
    assert sorted(obs.images) == ["cam_high", "cam_left_wrist", "cam_right_wrist"]
    assert obs.images["cam_left_wrist"].shape == (6, 8, 3)  # CxHxW turned HxWxC
    assert obs.images["cam_left_wrist"].flags.c_contiguous
    assert obs.state.dtype == np.float32
    assert obs.command == "fold"


def test_droid_preset_reads_flat_keys_and_concatenates_the_state() -> None:
    raw = {"observation/exterior_image_1_left": np.zeros((6, 8, 3), np.uint8),
           "observation/wrist_image_left": np.zeros((6, 8, 3), np.uint8),
           "observation/joint_position": np.arange(7, dtype=np.float32),
           "observation/gripper_position": np.array([0.5]), "prompt": "open the drawer"}
    obs = observation_of(raw, parse_map([], "droid"))
    assert obs.state.tolist() == [0, 1, 2, 3, 4, 5, 6, 0.5]
    assert obs.images["exterior_image_1_left"].shape == (6, 8, 3)


def test_map_items_override_the_preset_and_name_missing_keys() -> None:
    keymap = parse_map(["images/cam_high=camera:top", "task=command"], "aloha")
    assert keymap.cameras["images/cam_high"] == "top"
    assert keymap.command == "task"
    assert "prompt" not in keymap.describe()
    with pytest.raises(MappingError, match="no 'task'"):
        observation_of(aloha(), keymap)
    raw = aloha()
    raw["images"]["cam_high"] = np.zeros((3, 6, 8), np.float32)  # type: ignore[index]
    with pytest.raises(MappingError, match="uint8"):
        observation_of(raw, parse_map([], "aloha"))


@pytest.mark.parametrize(("items", "message"), [
    (["state"], "use KEY=camera:NAME"),
    (["x=camera:"], "SOURCE is camera:NAME"),
    (["x=state"], "names no camera"),
    (["a=camera:c", "b=camera:c"], "same camera"),
    (["a=camera:c", "p=command", "q=command"], "two keys map to the command"),
])
def test_malformed_mappings_say_why(items: list[str], message: str) -> None:
    with pytest.raises(MappingError, match=message):
        parse_map(items)


def test_unknown_preset() -> None:
    with pytest.raises(MappingError, match="unknown preset"):
        parse_map([], "bridge")
