"""Camera images on the wire: raw uint8 HxWxC (lossless) or JPEG at a chosen quality.

Raw camera photos barely compress with lz4 (about 1.1x), so bandwidth-bound fleets pick JPEG
per camera. JPEG goes through libjpeg-turbo (``simplejpeg``); its header is read, and its size
checked, before any pixel is decoded.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import numpy as np
import simplejpeg

from schemas.errors import SchemaError

MAX_SIDE = 4096
Side = Annotated[int, msgspec.Meta(ge=1, le=MAX_SIDE)]
Codec = Literal["raw", "jpeg"]


class Image(msgspec.Struct, frozen=True, kw_only=True):
    """One camera image. ``quality`` is 0 for raw, the JPEG quality (1..100) otherwise."""

    codec: Codec
    height: Side
    width: Side
    channels: Annotated[int, msgspec.Meta(ge=1, le=4)]
    data: memoryview
    quality: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0


def encode_image(pixels: np.ndarray, codec: Codec = "raw", quality: int = 85) -> Image:
    """Pack an HxWxC (or HxW) uint8 image with ``codec``."""
    if pixels.dtype != np.uint8:
        raise SchemaError(f"images are uint8, got {pixels.dtype}", "image.dtype")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3:
        raise SchemaError(f"images are HxWxC, got shape {pixels.shape}", "image.shape")
    height, width, channels = pixels.shape
    if codec == "raw":
        if not pixels.flags.c_contiguous:
            pixels = np.ascontiguousarray(pixels)
        return Image(codec="raw", height=height, width=width, channels=channels,
                     data=pixels.data.cast("B"))
    if codec == "jpeg":
        if channels not in (1, 3):
            raise SchemaError(f"JPEG takes 1 or 3 channels, got {channels}", "image.channels")
        colorspace = "GRAY" if channels == 1 else "RGB"
        data = simplejpeg.encode_jpeg(
            np.ascontiguousarray(pixels), quality=quality, colorspace=colorspace
        )
        return Image(codec="jpeg", height=height, width=width, channels=channels,
                     data=memoryview(data), quality=quality)
    raise SchemaError(f"unknown image codec {codec!r}", "image.codec")


def check_image(image: Image, *, path: str = "image") -> None:
    """Raise ``SchemaError`` naming ``path`` unless ``image``'s bytes can be what it says: a
    raw image holds exactly HxWxC bytes; a JPEG has 1 or 3 channels and a header whose
    dimensions are the image's (read from its header only, no pixel is decoded)."""
    if image.codec == "raw":
        expected = image.height * image.width * image.channels
        if len(image.data) != expected:
            raise SchemaError(
                f"raw {image.height}x{image.width}x{image.channels} needs {expected} bytes, "
                f"got {len(image.data)}", f"{path}.data")
        return
    if image.channels not in (1, 3):
        raise SchemaError(f"JPEG images have 1 or 3 channels, not {image.channels}",
                          f"{path}.channels")
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(image.data)
    except (ValueError, TypeError) as exc:
        raise SchemaError(f"not a JPEG stream: {exc}", f"{path}.data") from exc
    if (height, width) != (image.height, image.width):
        raise SchemaError(
            f"JPEG is {height}x{width}, header says {image.height}x{image.width}", f"{path}.data")


def decode_image(image: Image, *, path: str = "image") -> np.ndarray:
    """Return the HxWxC uint8 pixels (a read-only view for raw images)."""
    check_image(image, path=path)
    if image.codec == "raw":
        return np.frombuffer(image.data, dtype=np.uint8).reshape(
            image.height, image.width, image.channels)
    colorspace = "GRAY" if image.channels == 1 else "RGB"
    try:
        pixels = simplejpeg.decode_jpeg(bytes(image.data), colorspace=colorspace)
    except ValueError as exc:
        raise SchemaError(f"JPEG does not decode: {exc}", f"{path}.data") from exc
    return np.asarray(pixels).reshape(image.height, image.width, image.channels)
