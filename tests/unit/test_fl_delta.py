"""The update file format: fp16 and int8-with-scale deltas, checked on the way in."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save

from vlabus.fl.delta import DeltaError, decode_delta, describe_file, encode_delta, patch

SHAPES = {"head.weight": (4, 3), "head.bias": (4,)}


def sample() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {k: rng.normal(0, 0.1, s).astype(np.float32) for k, s in SHAPES.items()}


@pytest.mark.parametrize(("precision", "tolerance"), [("fp16", 1e-3), ("int8", 1 / 127)])
def test_round_trip_within_the_precision(precision: str, tolerance: float) -> None:
    delta = sample()
    back = decode_delta(encode_delta(delta, precision), SHAPES, precision)
    for name, value in delta.items():
        peak = float(np.abs(value).max())
        np.testing.assert_allclose(back[name], value, atol=tolerance * peak)


def test_int8_is_about_half_of_fp16_for_a_real_sized_tensor() -> None:
    big = {"w": np.random.default_rng(0).normal(0, 1, (112, 32)).astype(np.float32)}
    assert len(encode_delta(big, "int8")) < 0.6 * len(encode_delta(big, "fp16"))


def test_non_finite_values_are_refused() -> None:
    delta = sample()
    delta["head.bias"][1] = np.nan
    with pytest.raises(DeltaError) as info:
        decode_delta(encode_delta(delta, "fp16"), SHAPES, "fp16")
    assert info.value.reason == "non_finite"


def test_a_non_finite_int8_scale_is_refused() -> None:
    data = encode_delta(sample(), "int8")
    (length,) = struct.unpack_from("<Q", data)
    header = json.loads(data[8: 8 + length])
    scales = json.loads(header["__metadata__"]["vlabus.fl.scales"])
    tensors = {k: np.zeros(s, np.int8) for k, s in SHAPES.items()}
    forged = save(tensors, metadata={"vlabus.fl.precision": "int8", "vlabus.fl.scales":
                                     json.dumps({**scales, "head.bias": float("inf")})})
    with pytest.raises(DeltaError) as info:
        decode_delta(forged, SHAPES, "int8")
    assert info.value.reason == "non_finite"


@pytest.mark.parametrize("data", [
    b"", b"garbage", struct.pack("<Q", 1 << 40) + b"{}",
    save({"other": np.zeros(2, np.float16)}, metadata={"vlabus.fl.precision": "fp16"}),
    save({"head.weight": np.zeros((3, 4), np.float16)}, metadata={"vlabus.fl.precision": "fp16"}),
    save({"head.weight": np.zeros((4, 3), np.float32)}, metadata={"vlabus.fl.precision": "fp16"}),
    save({"head.weight": np.zeros((4, 3), np.float16)}, metadata={"vlabus.fl.precision": "int8"}),
])
def test_malformed_files_are_refused_with_a_reason(data: bytes) -> None:
    with pytest.raises(DeltaError) as info:
        decode_delta(data, SHAPES, "fp16")
    assert info.value.reason == "malformed"


def test_describe_file_chunks_and_hashes_like_a_release() -> None:
    data = encode_delta(sample(), "fp16")
    manifest, chunks = describe_file(data, name="edge", version=3, chunk_size=64)
    assert b"".join(chunks) == data
    assert manifest.size == len(data)
    assert len(manifest.chunk_sha256) == len(chunks) == -(-len(data) // 64)


def test_patch_adds_a_delta_and_keeps_metadata() -> None:
    base = save({"w": np.ones(3, np.float32), "v": np.zeros(2, np.float32)},
                metadata={"config": "x"})
    out = patch(base, {"w": np.full(3, 0.5, np.float32)}, add=True)
    from vlabus.fl.delta import read_tensors

    tensors, metadata = read_tensors(out)
    np.testing.assert_allclose(tensors["w"], 1.5)
    np.testing.assert_allclose(tensors["v"], 0.0)
    assert metadata == {"config": "x"}
