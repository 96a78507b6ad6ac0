"""Weight deltas as files: what a robot sends for a federated round, and how a base is patched.

A delta is a map from tensor name to a float32 array (trained minus base). On the wire it is a
safetensors file, so it is chunked and hashed exactly like a model release
(:func:`describe_file` builds the same :class:`~schemas.messages.ModelManifest`):

* ``fp16`` — every tensor as float16;
* ``int8`` — every tensor as int8 with a per-tensor float32 scale (symmetric: ``x ≈ q * s``),
  the scales kept as JSON in the file's metadata (``vlabus.fl.scales``).

:func:`decode_delta` reads untrusted bytes: it checks names, shapes, dtypes and that every value
is finite, and raises :class:`DeltaError` with a reason (``malformed`` or ``non_finite``).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import time
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from schemas.messages import ModelManifest

Array = npt.NDArray[np.float32]
Delta = dict[str, Array]
Shapes = Mapping[str, tuple[int, ...]]
PRECISIONS = ("fp16", "int8")
_SCALES = "vlabus.fl.scales"
_PRECISION = "vlabus.fl.precision"
MAX_HEADER = 1 << 20


class DeltaError(ValueError):
    """An update file is unusable; ``reason`` is ``malformed`` or ``non_finite``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def select(names: Iterable[str], prefixes: Iterable[str]) -> list[str]:
    """The names starting with any of ``prefixes``, in sorted order (deterministic files)."""
    wanted = tuple(prefixes)
    return sorted(n for n in names if wanted and n.startswith(wanted))


def norm(delta: Mapping[str, Array]) -> float:
    """The L2 norm of all tensors together (float64 accumulation)."""
    return math.sqrt(sum(float(np.square(v, dtype=np.float64).sum()) for v in delta.values()))


def clip(delta: Mapping[str, Array], bound: float) -> tuple[Delta, float]:
    """``delta`` scaled down to L2 norm ``bound`` when over it; returns it and the norm before."""
    total = norm(delta)
    factor = 1.0 if total <= bound or total == 0 else bound / total
    return {k: (v * factor).astype(np.float32) for k, v in delta.items()}, total


def encode_delta(delta: Mapping[str, Array], precision: str) -> bytes:
    """The safetensors bytes of ``delta`` at ``precision`` (``fp16`` or ``int8``)."""
    from safetensors.numpy import save

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use fp16 or int8")
    tensors: dict[str, np.ndarray[Any, Any]] = {}
    scales: dict[str, float] = {}
    for name in sorted(delta):
        value = np.asarray(delta[name], np.float32)
        if precision == "fp16":
            tensors[name] = value.astype(np.float16)
            continue
        peak = float(np.abs(value).max()) if value.size else 0.0
        scale = peak / 127.0 if peak > 0 else 1.0
        tensors[name] = np.clip(np.rint(value / scale), -127, 127).astype(np.int8)
        scales[name] = scale
    metadata = {_PRECISION: precision}
    if precision == "int8":
        metadata[_SCALES] = json.dumps(scales)
    return bytes(save(tensors, metadata=metadata))


def _header(data: bytes) -> dict[str, Any]:
    if len(data) < 8:
        raise DeltaError("malformed", "file too short to be safetensors")
    (length,) = struct.unpack_from("<Q", data)
    if length > min(MAX_HEADER, len(data) - 8):
        raise DeltaError("malformed", f"header length {length} out of range")
    try:
        header = json.loads(data[8: 8 + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DeltaError("malformed", f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise DeltaError("malformed", "header is not a JSON object")
    return header


def decode_delta(data: bytes, shapes: Shapes, precision: str) -> Delta:
    """Float32 tensors from an update file; every name must be in ``shapes`` with that shape,
    stored at ``precision``. Raises :class:`DeltaError`."""
    from safetensors.numpy import load

    header = _header(data)
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or metadata.get(_PRECISION) != precision:
        raise DeltaError("malformed", f"file is not stored at {precision}")
    names = [k for k in header if k != "__metadata__"]
    if not names:
        raise DeltaError("malformed", "no tensors")
    for name in names:
        if name not in shapes:
            raise DeltaError("malformed", f"tensor {name!r} is not trained in this round")
    scales: dict[str, Any] = {}
    if precision == "int8":
        try:
            scales = json.loads(metadata.get(_SCALES, ""))
        except json.JSONDecodeError as exc:
            raise DeltaError("malformed", "int8 scales are not JSON") from exc
        if not isinstance(scales, dict):
            raise DeltaError("malformed", "int8 scales are not a map")
    try:
        raw = load(data)
    except Exception as exc:  # SafetensorError, which the package does not export
        raise DeltaError("malformed", f"unreadable safetensors: {exc!r}") from exc
    want = np.dtype(np.float16) if precision == "fp16" else np.dtype(np.int8)
    out: Delta = {}
    for name in names:
        value = raw[name]
        if value.dtype != want or tuple(value.shape) != tuple(shapes[name]):
            raise DeltaError("malformed", f"{name}: {value.dtype} {value.shape}, expected "
                             f"{want} {tuple(shapes[name])}")
        if precision == "int8":
            scale = scales.get(name)
            if not isinstance(scale, (int, float)) or isinstance(scale, bool):
                raise DeltaError("malformed", f"{name}: no scale")
            if not math.isfinite(scale) or scale <= 0:
                raise DeltaError("non_finite", f"{name}: scale {scale!r}")
            out[name] = value.astype(np.float32) * np.float32(scale)
        else:
            out[name] = value.astype(np.float32)
        if not np.isfinite(out[name]).all():
            raise DeltaError("non_finite", f"{name} has NaN or infinite values")
    return out


def describe_file(data: bytes, *, name: str, version: int, chunk_size: int,
                  expires_s: float = 3600.0, metadata: dict[str, str] | None = None,
                  now_ns: int | None = None) -> tuple[ModelManifest, list[bytes]]:
    """Chunks of ``data`` and the manifest listing their SHA-256, as a model release has."""
    if chunk_size < 1:
        raise ValueError("chunk size must be positive")
    chunks = [data[i: i + chunk_size] for i in range(0, len(data), chunk_size)]
    created = time.time_ns() if now_ns is None else now_ns
    manifest = ModelManifest(
        name=name, version=version, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
        chunk_size=chunk_size, chunk_sha256=[hashlib.sha256(c).hexdigest() for c in chunks],
        created_ns=created, expires_ns=created + int(expires_s * 1e9), metadata=metadata or {})
    return manifest, chunks


def read_tensors(data: bytes) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, str]]:
    """All tensors of a (trusted, hash-checked) safetensors file and its metadata."""
    from safetensors.numpy import load

    metadata = _header(data).get("__metadata__") or {}
    return dict(load(data)), {str(k): str(v) for k, v in metadata.items()}


def patch(base: bytes, tensors: Mapping[str, Array], *, add: bool) -> bytes:
    """``base`` (a safetensors model) with ``tensors`` added to (``add``) or replacing its own;
    dtypes and the metadata (the model's config) are kept."""
    from safetensors.numpy import save

    weights, metadata = read_tensors(base)
    for name, value in tensors.items():
        old = weights[name]
        new = old.astype(np.float32) + value if add else value
        weights[name] = np.asarray(new).astype(old.dtype).reshape(old.shape)
    return bytes(save(weights, metadata=metadata))
