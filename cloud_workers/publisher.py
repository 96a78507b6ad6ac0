"""Model releases: a signed manifest (retained) followed by the weight file in signed chunks.

The manifest names the model, version, byte size, SHA-256 of the whole file and of every
chunk, and an expiry; it is signed by a ``release``-role key, so a robot trusts a chunk only
through the manifest that lists its hash. Only safetensors files are published (never pickle).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from schemas import topics
from schemas.messages import ModelChunk, ModelManifest
from vlabus.bus.transport import Transport
from vlabus.wire import Encoder

DEFAULT_CHUNK = 256 << 10
MAX_CHUNKS = 1 << 16
MAX_SAFETENSORS_HEADER = 100 << 20


class ReleaseError(ValueError):
    """The weight file cannot be released (not safetensors, too many chunks, ...)."""


@dataclass(frozen=True)
class Release:
    manifest: ModelManifest
    chunks: list[bytes]


def check_safetensors(data: bytes) -> dict[str, object]:
    """Parse the safetensors header (u64 LE length + JSON) without loading any tensor."""
    if len(data) < 8:
        raise ReleaseError("file too short to be safetensors")
    (length,) = struct.unpack_from("<Q", data)
    if length > min(MAX_SAFETENSORS_HEADER, len(data) - 8):
        raise ReleaseError(f"safetensors header length {length} is out of range")
    try:
        header = json.loads(data[8: 8 + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReleaseError(f"safetensors header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ReleaseError("safetensors header is not a JSON object")
    return header


def build_release(data: bytes, *, name: str, version: int, chunk_size: int = DEFAULT_CHUNK,
                  expires_s: float = 7 * 86400, metadata: dict[str, str] | None = None,
                  now_ns: int | None = None, epoch: int = 0) -> Release:
    """Split ``data`` (a safetensors file) into chunks and describe it in a manifest."""
    check_safetensors(data)
    topics.check_name(name)
    if chunk_size < 1:
        raise ReleaseError("chunk size must be positive")
    chunks = [data[i: i + chunk_size] for i in range(0, len(data), chunk_size)]
    if len(chunks) > MAX_CHUNKS:
        raise ReleaseError(f"{len(chunks)} chunks, at most {MAX_CHUNKS}: raise --chunk-size")
    created = time.time_ns() if now_ns is None else now_ns
    manifest = ModelManifest(
        name=name, version=version, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
        chunk_size=chunk_size, chunk_sha256=[hashlib.sha256(c).hexdigest() for c in chunks],
        created_ns=created, expires_ns=created + int(expires_s * 1e9),
        metadata=metadata or {}, epoch=epoch)
    return Release(manifest, chunks)


async def publish_release(transport: Transport, encoder: Encoder, release: Release, *,
                          window: int = 16) -> int:
    """Publish the manifest (retained, QoS 1), then every chunk (QoS 1, ``window`` in flight).
    Returns the number of bytes published."""
    manifest = release.manifest
    sent = 0
    payload = encoder.encode(manifest)
    await transport.publish(topics.model_manifest_topic(manifest.name), payload, qos=1,
                            retain=True)
    sent += len(payload)
    chunk_topic = topics.model_chunk_topic(manifest.name)
    pending: set[asyncio.Task[None]] = set()
    for index, data in enumerate(release.chunks):
        body = encoder.encode(ModelChunk(name=manifest.name, version=manifest.version,
                                         index=index, data=memoryview(data)))
        sent += len(body)
        if len(pending) >= window:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        pending.add(asyncio.create_task(transport.publish(chunk_topic, body, qos=1)))
    for task in list(pending):
        await task
    return sent


def read_weights(path: str | Path) -> bytes:
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ReleaseError(f"{path} is not a .safetensors file (pickle is never published)")
    return path.read_bytes()
