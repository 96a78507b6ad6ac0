"""Camera images on the wire: raw uint8 HxWxC, lz4 (both lossless) or JPEG at a quality.

Raw camera photos barely compress with lz4 (about 1.1x), so bandwidth-bound fleets pick JPEG
per camera. JPEG goes through libjpeg-turbo (``simplejpeg``); its header is read, and its size
checked, before any pixel is decoded. lz4 images are decompressed into exactly the declared
size, never more.

``scale`` is a resolution step: the sender averaged ``scale`` x ``scale`` pixel blocks before
encoding (``height`` and ``width`` are the sizes sent), and :func:`decode_image` returns the
image at the size the camera captured (``height*scale`` x ``width*scale``, by pixel
repetition), so a policy sees the shape it was built for whatever the uplink allowed.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import lz4.block
import msgspec
import numpy as np
import numpy.typing as npt
import simplejpeg

from schemas.errors import SchemaError

MAX_SIDE = 4096
Side = Annotated[int, msgspec.Meta(ge=1, le=MAX_SIDE)]
Codec = Literal["raw", "lz4", "jpeg"]
MAX_SCALE = 8
Pixels = npt.NDArray[np.uint8]


class Image(msgspec.Struct, frozen=True, kw_only=True):
    """One camera image. ``quality`` is the JPEG quality (1..100), 0 for lossless codecs;
    ``scale`` the resolution step (1: as captured)."""

    codec: Codec
    height: Side
    width: Side
    channels: Annotated[int, msgspec.Meta(ge=1, le=4)]
    data: memoryview
    quality: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0
    scale: Annotated[int, msgspec.Meta(ge=1, le=MAX_SCALE)] = 1


def encode_image(pixels: npt.NDArray[Any], codec: Codec = "raw", quality: int = 85,
                 scale: int = 1) -> Image:
    """Pack an HxWxC (or HxW) uint8 image with ``codec``, at 1/``scale`` of its resolution
    (height and width must then be multiples of ``scale``)."""
    if pixels.dtype != np.uint8:
        raise SchemaError(f"images are uint8, got {pixels.dtype}", "image.dtype")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3:
        raise SchemaError(f"images are HxWxC, got shape {pixels.shape}", "image.shape")
    if scale != 1:
        pixels = downscale(pixels, scale)
    height, width, channels = pixels.shape
    if codec in ("raw", "lz4"):
        if not pixels.flags.c_contiguous:
            pixels = np.ascontiguousarray(pixels)
        data = pixels.data.cast("B")
        if codec == "lz4":
            data = memoryview(lz4.block.compress(data, store_size=False))
        return Image(codec=codec, height=height, width=width, channels=channels, data=data,
                     scale=scale)
    if codec == "jpeg":
        if channels not in (1, 3):
            raise SchemaError(f"JPEG takes 1 or 3 channels, got {channels}", "image.channels")
        colorspace = "GRAY" if channels == 1 else "RGB"
        data = simplejpeg.encode_jpeg(
            np.ascontiguousarray(pixels), quality=quality, colorspace=colorspace
        )
        return Image(codec="jpeg", height=height, width=width, channels=channels,
                     data=memoryview(data), quality=quality, scale=scale)
    raise SchemaError(f"unknown image codec {codec!r}", "image.codec")


def decode_image(image: Image, *, path: str = "image") -> Pixels:
    """Return the HxWxC uint8 pixels at the captured size (a read-only view for raw images
    sent at full resolution); raises ``SchemaError`` naming the bad field."""
    if max(image.height, image.width) * image.scale > MAX_SIDE:
        raise SchemaError(f"image of {image.height}x{image.width} at scale {image.scale} is "
                          f"larger than {MAX_SIDE} pixels a side", f"{path}.scale")
    pixels = _decode(image, path)
    return pixels if image.scale == 1 else upscale(pixels, image.scale)


def check_image(image: Image, *, path: str = "image") -> None:
    """Raise ``SchemaError`` naming ``path`` unless ``image``'s bytes can be what it says,
    without decoding a pixel: a raw image holds exactly HxWxC bytes; an lz4 one no more than
    lz4's bound for that size; a JPEG has 1 or 3 channels and a header whose dimensions are the
    image's; the captured size (times ``scale``) is at most ``MAX_SIDE`` a side."""
    if max(image.height, image.width) * image.scale > MAX_SIDE:
        raise SchemaError(f"image of {image.height}x{image.width} at scale {image.scale} is "
                          f"larger than {MAX_SIDE} pixels a side", f"{path}.scale")
    expected = image.height * image.width * image.channels
    size = len(image.data)
    if image.codec == "raw" and size != expected:
        raise SchemaError(f"raw {image.height}x{image.width}x{image.channels} needs {expected} "
                          f"bytes, got {size}", f"{path}.data")
    if image.codec == "lz4" and not 0 < size <= expected + expected // 255 + 16:
        raise SchemaError(f"lz4 image of {size} bytes cannot hold {expected}", f"{path}.data")
    if image.codec != "jpeg":
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


def downscale(pixels: Pixels, scale: int) -> Pixels:
    """The mean of each ``scale`` x ``scale`` block (area downsampling) of HxWxC uint8 pixels."""
    height, width, channels = pixels.shape
    if scale < 1 or height % scale or width % scale:
        raise SchemaError(f"a {height}x{width} image does not divide by scale {scale}",
                          "image.scale")
    blocks = pixels.reshape(height // scale, scale, width // scale, scale, channels)
    mean = blocks.mean(axis=(1, 3), dtype=np.float32)
    return np.ascontiguousarray(np.rint(mean).astype(np.uint8))


def upscale(pixels: Pixels, scale: int) -> Pixels:
    """Each pixel repeated ``scale`` times down and across (the inverse size of downscale)."""
    return np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)


def _decode(image: Image, path: str) -> Pixels:
    expected = image.height * image.width * image.channels
    if image.codec == "lz4":
        try:
            data = lz4.block.decompress(image.data, uncompressed_size=expected)
        except lz4.block.LZ4BlockError as exc:
            raise SchemaError(f"lz4 image does not decompress to {expected} bytes: {exc}",
                              f"{path}.data") from exc
        if len(data) != expected:
            raise SchemaError(f"lz4 image holds {len(data)} bytes, not {expected}",
                              f"{path}.data")
        return np.frombuffer(data, dtype=np.uint8).reshape(
            image.height, image.width, image.channels)
    if image.codec == "raw":
        if len(image.data) != expected:
            raise SchemaError(
                f"raw {image.height}x{image.width}x{image.channels} needs {expected} bytes, "
                f"got {len(image.data)}", f"{path}.data")
        return np.frombuffer(image.data, dtype=np.uint8).reshape(
            image.height, image.width, image.channels)
    if image.channels not in (1, 3):
        raise SchemaError(f"JPEG images have 1 or 3 channels, not {image.channels}",
                          f"{path}.channels")
    data = bytes(image.data)
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise SchemaError(f"not a JPEG stream: {exc}", f"{path}.data") from exc
    if (height, width) != (image.height, image.width):
        raise SchemaError(
            f"JPEG is {height}x{width}, header says {image.height}x{image.width}", f"{path}.data")
    colorspace = "GRAY" if image.channels == 1 else "RGB"
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace=colorspace)
    except ValueError as exc:
        raise SchemaError(f"JPEG does not decode: {exc}", f"{path}.data") from exc
    return np.asarray(pixels).reshape(image.height, image.width, image.channels)
