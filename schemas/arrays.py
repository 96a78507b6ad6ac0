"""Numeric arrays on the wire: raw little-endian bytes with a dtype name and a shape.

Arrays never travel pickled. Only plain numeric dtypes are accepted; object, string and
structured dtypes are refused on both sides.
"""

from __future__ import annotations

import math
from typing import Annotated

import msgspec
import numpy as np

from schemas.errors import SchemaError

MAX_DIMS = 8

#: Wire dtype name -> numpy dtype (always little-endian on the wire).
DTYPES: dict[str, np.dtype[np.generic]] = {
    name: np.dtype(name).newbyteorder("<")
    for name in (
        "bool", "uint8", "int8", "uint16", "int16", "uint32", "int32",
        "uint64", "int64", "float16", "float32", "float64",
    )
}


class NDArray(msgspec.Struct, frozen=True, kw_only=True):
    """An n-dimensional numeric array: ``dtype`` name, ``shape`` and C-order ``data`` bytes."""

    dtype: str
    shape: Annotated[list[Annotated[int, msgspec.Meta(ge=0)]], msgspec.Meta(max_length=MAX_DIMS)]
    data: memoryview


def pack_array(array: np.ndarray) -> NDArray:
    """Wrap ``array`` for the wire without copying when it is already C-contiguous LE."""
    name = array.dtype.name
    if name not in DTYPES:
        raise SchemaError(f"dtype {array.dtype!r} cannot travel on the wire", "dtype")
    if array.ndim > MAX_DIMS:
        raise SchemaError(f"{array.ndim} dimensions, at most {MAX_DIMS}", "shape")
    wire_dtype = DTYPES[name]
    if array.dtype != wire_dtype or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array, dtype=wire_dtype)
    data = array.data.cast("B") if array.size else memoryview(b"")
    return NDArray(dtype=name, shape=list(array.shape), data=data)


def unpack_array(
    packed: NDArray, *, path: str = "array", max_elements: int = 1 << 26
) -> np.ndarray:
    """Return a read-only numpy view over ``packed.data``; checks dtype, shape and length."""
    wire_dtype = DTYPES.get(packed.dtype)
    if wire_dtype is None:
        raise SchemaError(f"dtype {packed.dtype!r} is not allowed", f"{path}.dtype")
    count = math.prod(packed.shape)
    if count > max_elements:
        raise SchemaError(f"{count} elements, at most {max_elements}", f"{path}.shape")
    expected = count * wire_dtype.itemsize
    if len(packed.data) != expected:
        raise SchemaError(
            f"shape {packed.shape} of {packed.dtype} needs {expected} bytes, "
            f"got {len(packed.data)}",
            f"{path}.data",
        )
    return np.frombuffer(packed.data, dtype=wire_dtype).reshape(packed.shape)
