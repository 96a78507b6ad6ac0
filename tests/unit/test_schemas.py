"""Arrays, images, topics and message validation."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from edge_agent.scene import TabletopScene
from schemas.arrays import DTYPES, NDArray, pack_array, unpack_array
from schemas.errors import SchemaError
from schemas.images import Image, decode_image, encode_image
from schemas.messages import KINDS, Frame, Status
from schemas.topics import (
    ALL_FRAMES,
    action_topic,
    check_id,
    frame_topic,
    group_problem,
    matches,
    model_chunk_topic,
    robot_of,
    shared,
    topic_filter_problem,
    topic_name_problem,
    worker_status_topic,
)


def roundtrip_array(array: np.ndarray) -> np.ndarray:
    wire = msgspec.msgpack.encode(pack_array(array))
    return unpack_array(msgspec.msgpack.decode(wire, type=NDArray))


@pytest.mark.parametrize("dtype", sorted(DTYPES))
def test_array_roundtrip_every_dtype(dtype: str) -> None:
    array = (np.arange(24) % 2 if dtype == "bool" else np.arange(24)).astype(dtype).reshape(2, 3, 4)
    out = roundtrip_array(array)
    assert out.dtype == array.dtype
    assert out.shape == array.shape
    np.testing.assert_array_equal(out, array)
    assert not out.flags.writeable


def test_array_non_contiguous_big_endian_and_empty() -> None:
    base = np.arange(20, dtype=">f4").reshape(4, 5)
    out = roundtrip_array(base[:, ::2])
    np.testing.assert_array_equal(out, base[:, ::2])
    assert out.dtype == np.dtype("<f4")
    assert roundtrip_array(np.zeros((0, 3), np.float32)).shape == (0, 3)


def test_pack_is_zero_copy_for_contiguous_arrays() -> None:
    array = np.arange(6, dtype=np.float32)
    packed = pack_array(array)
    array[0] = 42.0
    assert np.frombuffer(packed.data, np.float32)[0] == 42.0


@pytest.mark.parametrize("array", [
    np.array([object(), 1], dtype=object), np.array(["a", "b"]), np.zeros(2, dtype="c16"),
    np.zeros(2, dtype=[("x", "i4"), ("y", "f4")]), np.zeros((1,) * 9, np.uint8),
])
def test_pack_refuses_non_numeric_and_deep_arrays(array: np.ndarray) -> None:
    with pytest.raises(SchemaError):
        pack_array(array)


@pytest.mark.parametrize(("packed", "path"), [
    (NDArray(dtype="object", shape=[1], data=memoryview(b"\0" * 8)), "state.dtype"),
    (NDArray(dtype="float32", shape=[3], data=memoryview(b"\0" * 8)), "state.data"),
    (NDArray(dtype="uint8", shape=[1 << 20, 1 << 20], data=memoryview(b"")), "state.shape"),
])
def test_unpack_checks_dtype_length_and_size(packed: NDArray, path: str) -> None:
    with pytest.raises(SchemaError) as info:
        unpack_array(packed, path="state")
    assert info.value.path == path


def test_array_shape_is_bounded_on_decode() -> None:
    wire = msgspec.msgpack.encode({"dtype": "uint8", "shape": [1] * 9, "data": b"\0"})
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(wire, type=NDArray)


def test_raw_image_roundtrip_is_exact() -> None:
    pixels = TabletopScene(48, 64, seed=1).render(3)
    image = msgspec.msgpack.decode(msgspec.msgpack.encode(encode_image(pixels)), type=Image)
    assert (image.codec, image.height, image.width, image.channels) == ("raw", 48, 64, 3)
    np.testing.assert_array_equal(decode_image(image), pixels)


def test_jpeg_image_is_close_and_much_smaller() -> None:
    pixels = TabletopScene(224, 224, seed=2).render(0)
    image = encode_image(pixels, "jpeg", quality=85)
    assert image.quality == 85
    assert len(image.data) * 5 < pixels.nbytes
    out = decode_image(msgspec.msgpack.decode(msgspec.msgpack.encode(image), type=Image))
    assert out.shape == pixels.shape
    assert np.abs(out.astype(int) - pixels.astype(int)).mean() < 6


def test_grayscale_images() -> None:
    gray = TabletopScene(32, 32, seed=3).render(0)[:, :, 0]
    assert decode_image(encode_image(gray)).shape == (32, 32, 1)
    assert decode_image(encode_image(gray, "jpeg")).shape == (32, 32, 1)


def test_image_encode_refusals() -> None:
    with pytest.raises(SchemaError):
        encode_image(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(SchemaError):
        encode_image(np.zeros((4, 4, 3, 1), np.uint8))
    with pytest.raises(SchemaError):
        encode_image(np.zeros((4, 4, 4), np.uint8), "jpeg")
    with pytest.raises(SchemaError):
        encode_image(np.zeros((4, 4, 3), np.uint8), "png")  # type: ignore[arg-type]


def test_image_decode_refusals() -> None:
    raw = Image(codec="raw", height=4, width=4, channels=3, data=memoryview(bytes(47)))
    with pytest.raises(SchemaError, match="needs 48"):
        decode_image(raw)
    jpeg = encode_image(TabletopScene(32, 48, seed=4).render(0), "jpeg")
    lying = Image(codec="jpeg", height=480, width=640, channels=3, data=jpeg.data, quality=85)
    with pytest.raises(SchemaError, match="header says"):
        decode_image(lying)  # dimensions are checked before any pixel is decoded
    garbage = Image(codec="jpeg", height=4, width=4, channels=3, data=memoryview(b"nope" * 10))
    with pytest.raises(SchemaError, match="JPEG"):
        decode_image(garbage)
    truncated = Image(codec="jpeg", height=32, width=48, channels=3,
                      data=memoryview(bytes(jpeg.data)[:200]))
    with pytest.raises(SchemaError):
        decode_image(truncated)


def test_image_dimensions_are_bounded_on_decode() -> None:
    wire = msgspec.msgpack.encode({"codec": "raw", "height": 5000, "width": 1, "channels": 1,
                                   "data": b""})
    with pytest.raises(msgspec.ValidationError, match="height"):
        msgspec.msgpack.decode(wire, type=Image)


def test_messages_validate_ids_and_limits() -> None:
    good = msgspec.msgpack.encode(Status(client_id="robot-a", role="robot", state="online",
                                         session=1, time_ns=5))
    decoded = msgspec.msgpack.decode(good, type=KINDS["status"])
    assert decoded.client_id == "robot-a"  # type: ignore[union-attr]
    bad = msgspec.msgpack.encode({**msgspec.msgpack.decode(good), "client_id": "Robot A"})
    with pytest.raises(msgspec.ValidationError, match="client_id"):
        msgspec.msgpack.decode(bad, type=Status)
    frame_map = {"robot_id": "robot-a", "step": 0, "cameras": {}, "command": "",
                 "state": {"dtype": "float32", "shape": [0], "data": b""}, "capture_ns": 0}
    with pytest.raises(msgspec.ValidationError, match="cameras"):
        msgspec.msgpack.decode(msgspec.msgpack.encode(frame_map), type=Frame)


def test_topics() -> None:
    assert frame_topic("robot-a") == "vla/v1/robot-a/frame"
    assert action_topic("robot-a") == "vla/v1/robot-a/action"
    assert worker_status_topic("w-1") == "vla/v1/workers/w-1/status"
    assert model_chunk_topic("pi0.5") == "vla/v1/models/pi0.5/chunk"
    assert shared("gpu", ALL_FRAMES) == "$share/gpu/vla/v1/+/frame"
    assert robot_of("vla/v1/robot-a/frame") == "robot-a"
    assert robot_of("vla/v1/workers/w-1/status") is None
    assert robot_of("vla/v1/models/pi0/chunk") is None
    assert matches(ALL_FRAMES, "vla/v1/robot-a/frame")
    assert not matches(ALL_FRAMES, "vla/v1/robot-a/action")
    assert matches("vla/v1/models/#", "vla/v1/models/pi0/manifest")
    assert not matches("vla/v1/+", "vla/v1/robot-a/frame")
    for bad in ("Robot", "-a", "a/b", "a+", "#", "", "workers", "models", "x" * 65):
        with pytest.raises(SchemaError):
            check_id(bad)
    with pytest.raises(SchemaError):
        model_chunk_topic("a/b")


def test_topic_names_and_filters_follow_mqtt() -> None:
    for good in ("vla/v1/robot-a/frame", "/", "a//b", "$SYS/x", "é/ü", "x" * 65535):
        assert topic_name_problem(good) is None, good
    for bad, why in (("", "empty"), ("vla/+/frame", "wildcard"), ("vla/#", "wildcard"),
                     ("a+b", "wildcard"), ("a\0b", "NUL"), ("x" * 65536, "over 65535"),
                     ("é" * 32768, "over 65535"), ("a\ud800", "UTF-8")):
        problem = topic_name_problem(bad)
        assert problem is not None, bad
        assert why in problem
    for good in ("#", "+", "vla/v1/+/frame", "vla/v1/#", "+/+/#", "/#", "a//+", "vla/v1/r"):
        assert topic_filter_problem(good) is None, good
    for bad, why in (("", "empty"), ("vla/#/x", "'#'"), ("vla/#x", "'#'"), ("a#", "'#'"),
                     ("vla/a+", "'+'"), ("+a/b", "'+'"), ("a\0#", "'#'"), ("a\0b", "NUL"),
                     ("$share/g/vla/#", "group="), ("y" * 65536, "over 65535")):
        problem = topic_filter_problem(bad)
        assert problem is not None, bad
        assert why in problem, (bad, problem)
    assert group_problem("workers") is None
    for bad in ("a/b", "g+", "#", "x\0"):
        assert group_problem(bad) is not None, bad


@pytest.mark.parametrize("channels", [2, 4])
def test_jpeg_with_odd_channel_count_is_a_schema_error(channels: int) -> None:
    jpeg = encode_image(TabletopScene(16, 16, seed=5).render(0), "jpeg")
    odd = Image(codec="jpeg", height=16, width=16, channels=channels, data=jpeg.data, quality=85)
    with pytest.raises(SchemaError) as info:
        decode_image(odd, path="cameras.front")
    assert info.value.path == "cameras.front.channels"


def test_lz4_image_is_lossless_and_bounded() -> None:
    pixels = TabletopScene(32, 48, seed=6).render(0)
    image = encode_image(pixels, "lz4")
    assert image.codec == "lz4"
    assert np.array_equal(decode_image(image), pixels)
    lying = Image(codec="lz4", height=64, width=48, channels=3, data=image.data)
    with pytest.raises(SchemaError, match="lz4"):
        decode_image(lying)
    garbage = Image(codec="lz4", height=4, width=4, channels=3, data=memoryview(b"\xff" * 9))
    with pytest.raises(SchemaError, match="lz4"):
        decode_image(garbage)


def test_resolution_step_decodes_at_the_captured_size() -> None:
    pixels = TabletopScene(32, 48, seed=7).render(0)
    for codec in ("raw", "lz4", "jpeg"):
        image = encode_image(pixels, codec, 90, scale=2)  # type: ignore[arg-type]
        assert (image.height, image.width, image.scale) == (16, 24, 2)
        back = decode_image(image)
        assert back.shape == pixels.shape
        assert np.abs(back.astype(int) - pixels.astype(int)).mean() < 40
    with pytest.raises(SchemaError, match="scale"):
        encode_image(pixels[:31], "raw", scale=2)
    huge = Image(codec="raw", height=4000, width=1, channels=1, data=memoryview(bytes(4000)),
                 scale=2)
    with pytest.raises(SchemaError, match="scale"):
        decode_image(huge)
