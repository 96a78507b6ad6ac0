"""Anonymisation on the robot: faces in a real photo (scikit-image's astronaut) are found by
OpenCV's Haar cascade before blurring and not after; state noise on named fields only."""

from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
skimage_data = pytest.importorskip("skimage.data")

from edge_agent.anonymize import AnonymizeError, FaceBlur, parse_anonymize  # noqa: E402
from vlabus.policy import Observation  # noqa: E402


@pytest.fixture(scope="module")
def blur() -> FaceBlur:
    return FaceBlur()


@pytest.mark.parametrize("size", [512, 224])
def test_a_face_found_before_is_not_found_after(blur: FaceBlur, size: int) -> None:
    photo = cv2.resize(skimage_data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    assert len(blur.detect(photo)) == 1
    out, count = blur(photo)
    assert count == 1
    assert blur.detect(out) == []
    # only the face region changed; the rest of the photo is untouched
    assert np.mean(out != photo) < 0.25
    assert (out[-20:, -20:] == photo[-20:, -20:]).all()


def test_a_frame_without_faces_is_passed_through(blur: FaceBlur) -> None:
    from edge_agent.scene import TabletopScene

    frame = TabletopScene(224, 224, seed=1).render(0)
    out, count = blur(frame)
    assert count == 0
    assert out is frame


def test_the_anonymizer_blurs_every_camera_and_noises_only_the_named_fields() -> None:
    anonymizer = parse_anonymize(["faces", "state:2-3=0.5"], seed=0)
    assert anonymizer is not None
    assert anonymizer.describe() == "faces,state:2-3=0.5"
    photo = cv2.resize(skimage_data.astronaut(), (224, 224), interpolation=cv2.INTER_AREA)
    obs = Observation(images={"front": photo, "wrist": photo}, command="wave",
                      state=np.zeros(6, np.float32))
    out = anonymizer(obs)
    assert anonymizer.faces is not None
    assert all(anonymizer.faces.detect(img) == [] for img in out.images.values())
    assert anonymizer.faces_blurred == 2
    assert (out.state[[0, 1, 4, 5]] == 0).all()
    assert (out.state[2:4] != 0).all()
    assert (obs.state == 0).all()  # the original observation is not modified
    assert anonymizer.counters()["face_ms_per_frame"] > 0


@pytest.mark.parametrize("value", ["eyes", "state:x=1", "state:3=", "state:5-2=0.1"])
def test_bad_values_are_refused(value: str) -> None:
    with pytest.raises(AnonymizeError):
        parse_anonymize([value])


def test_a_state_field_past_the_state_is_refused() -> None:
    anonymizer = parse_anonymize(["state:20=0.1"])
    assert anonymizer is not None
    with pytest.raises(AnonymizeError, match="14 fields"):
        anonymizer.check_state(14)
