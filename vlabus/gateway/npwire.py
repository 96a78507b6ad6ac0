"""openpi's wire: MessagePack with NumPy arrays as ``{"__ndarray__": True, "data", "dtype",
"shape"}`` maps (and scalars as ``{"__npgeneric__": True, "data", "dtype"}``), as
``openpi_client.msgpack_numpy`` writes them.

Unpacking here checks what openpi's own helper does not: only plain numeric and bool dtypes
(never object, void or complex, so nothing can turn into pickle), a shape of at most 8
non-negative dimensions, and a data length that matches dtype and shape. Anything else raises
:class:`NpWireError` naming the problem. Arrays come back read-only views of the message.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

MAX_DIMS = 8
ALLOWED_KINDS = frozenset("biuf")  # bool, signed, unsigned, float


class NpWireError(ValueError):
    """A message is not openpi's MessagePack-with-NumPy, or holds an array we refuse."""


def _dtype(text: Any) -> np.dtype[Any]:
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not isinstance(text, str) or len(text) > 16:
        raise NpWireError(f"bad dtype {text!r}")
    try:
        dtype = np.dtype(text)
    except TypeError as exc:
        raise NpWireError(f"bad dtype {text!r}") from exc
    if dtype.kind not in ALLOWED_KINDS or dtype.fields is not None or dtype.subdtype:
        raise NpWireError(f"dtype {text!r} is not a plain numeric type")
    return dtype


def _hook(obj: dict[Any, Any]) -> Any:
    if b"__ndarray__" in obj:
        dtype = _dtype(obj.get(b"dtype"))
        shape = obj.get(b"shape")
        data = obj.get(b"data")
        if (not isinstance(shape, list | tuple) or len(shape) > MAX_DIMS
                or not all(isinstance(d, int) and d >= 0 for d in shape)):
            raise NpWireError(f"bad shape {shape!r}")
        if not isinstance(data, bytes):
            raise NpWireError("array data is not bytes")
        if math.prod(shape) * dtype.itemsize != len(data):
            raise NpWireError(f"shape {list(shape)} of {dtype} needs "
                              f"{math.prod(shape) * dtype.itemsize} bytes, got {len(data)}")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if b"__npgeneric__" in obj:
        dtype = _dtype(obj.get(b"dtype"))
        value = obj.get(b"data")
        if not isinstance(value, int | float | bool):
            raise NpWireError("bad numpy scalar")
        return dtype.type(value)
    return obj


def unpackb(data: bytes) -> Any:
    """Decode one message; raises :class:`NpWireError` for anything malformed."""
    try:
        return msgpack.unpackb(data, object_hook=_hook)
    except NpWireError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise NpWireError(f"not MessagePack: {exc!r}") from exc


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in ALLOWED_KINDS:
            raise TypeError(f"cannot send dtype {obj.dtype}")
        array = np.ascontiguousarray(obj)
        return {b"__ndarray__": True, b"data": array.tobytes(), b"dtype": array.dtype.str,
                b"shape": list(array.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send {type(obj).__name__}")


def packb(obj: Any) -> bytes:
    """Encode ``obj`` the way ``openpi_client.msgpack_numpy.packb`` does."""
    packed: bytes = msgpack.packb(obj, default=_default)
    return packed
