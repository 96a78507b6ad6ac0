"""Content is checked at decode, before anything is queued: array lengths against shape and
dtype, raw image sizes against their bytes, JPEG header dimensions (issue 16, item 5)."""

from __future__ import annotations

import numpy as np
import pytest
import simplejpeg

from schemas.arrays import NDArray, pack_array
from schemas.errors import SchemaError
from schemas.images import Image, encode_image
from schemas.messages import Action, Frame
from tests.support.frames import make_frame
from tests.support.keys import KeyDir
from tests.support.robot import Robot
from tests.support.wire import Fleet, frame
from tests.support.worker import run_on_memory, serving
from vlabus.wire import Encoder


def with_camera(image: Image, state: NDArray | None = None) -> Frame:
    base = frame()
    return Frame(robot_id=base.robot_id, step=base.step, cameras={"front": image},
                 command=base.command, state=base.state if state is None else state,
                 capture_ns=base.capture_ns)


def jpeg(height: int, width: int) -> bytes:
    pixels = np.zeros((height, width, 3), np.uint8)
    return bytes(simplejpeg.encode_jpeg(pixels, quality=80, colorspace="RGB"))


BAD = {
    "raw image shorter than its size": (
        with_camera(Image(codec="raw", height=8, width=8, channels=3, data=memoryview(b"x" * 10))),
        "cameras.front.data"),
    "JPEG bytes that are no JPEG": (
        with_camera(Image(codec="jpeg", height=8, width=8, channels=3,
                          data=memoryview(b"\xff\xd8 not a jpeg at all"), quality=80)),
        "cameras.front.data"),
    "JPEG whose header has other dimensions": (
        with_camera(Image(codec="jpeg", height=8, width=8, channels=3,
                          data=memoryview(jpeg(16, 24)), quality=80)),
        "cameras.front.data"),
    "JPEG with 4 channels": (
        with_camera(Image(codec="jpeg", height=16, width=24, channels=4,
                          data=memoryview(jpeg(16, 24)), quality=80)),
        "cameras.front.channels"),
    "state shorter than its shape": (
        with_camera(encode_image(np.zeros((8, 8, 3), np.uint8)),
                    NDArray(dtype="float32", shape=[4], data=memoryview(b"\0" * 12))),
        "state.data"),
    "state of a refused dtype": (
        with_camera(encode_image(np.zeros((8, 8, 3), np.uint8)),
                    NDArray(dtype="complex64", shape=[1], data=memoryview(b"\0" * 8))),
        "state.dtype"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_inconsistent_frames_are_refused_at_decode_naming_the_field(case: str) -> None:
    message, path = BAD[case]
    fleet = Fleet()
    with pytest.raises(SchemaError) as caught:
        fleet.decoder.decode(fleet.encoder.encode(message))
    assert caught.value.path == path


def test_an_action_whose_data_does_not_fit_its_shape_is_refused() -> None:
    fleet = Fleet()
    action = Action(robot_id="robot-a", step=1, model="m", model_version=1,
                    worker_id="worker-1",
                    actions=NDArray(dtype="float32", shape=[4, 7], data=memoryview(b"\0" * 8)))
    with pytest.raises(SchemaError) as caught:
        fleet.decoder.decode(Encoder(fleet.worker, clock=fleet.clock).encode(action))
    assert caught.value.path == "actions.data"


def test_consistent_raw_and_jpeg_frames_pass() -> None:
    fleet = Fleet()
    pixels = np.zeros((16, 24, 3), np.uint8)
    for image in (encode_image(pixels), encode_image(pixels, "jpeg", 80)):
        state = pack_array(np.ones(4, np.float32))
        assert fleet.decoder.decode(fleet.encoder.encode(with_camera(image, state))).message


def test_a_bad_frame_is_a_schema_reject_at_the_worker_and_never_queued(keydir: KeyDir) -> None:
    async def body(url: str) -> None:
        async with serving(url, keydir) as worker:
            robot = await Robot.connect(url, keydir.signers["robot-a"], keydir.ring)
            good = make_frame("robot-a", 1)
            short = Image(codec="raw", height=32, width=32, channels=3,
                          data=memoryview(b"\0" * 100))
            bad = Frame(robot_id="robot-a", step=2, cameras={"front": short},
                        command=good.command, state=good.state, capture_ns=good.capture_ns)
            await robot.send_frame(bad, "bad")
            await robot.send_frame(good, "good")  # the marker: answered after the bad one
            await robot.wait_for(1)
            assert set(robot.replies) == {"good"}
            assert worker.metrics.summary.rejected == {"schema": 1}
            assert "policy_error" not in worker.metrics.summary.dropped
            await robot.close()
    run_on_memory(body)
