"""Envelope codec cost per frame, next to the raw-library floor measured in the same run.

    python -m bench.codec --json [--quick]

Cases: (a) two 224x224x3 cameras + 14-float state + command, (b) one 480x640x3 camera; each
with raw and JPEG (quality 85) images rendered by ``edge_agent.scene.TabletopScene``.

* ``encode`` — ``Encoder.encode(frame)``: msgpack, adaptive lz4, header, BLAKE3 + Ed25519 sign.
* ``decode`` — ``Decoder.decode(wire)`` with a replay guard: header, key, verify, guard,
  bounded decompression, typed decode (JPEG pixels are not decoded; see ``image``).
* ``floor`` — the issue's floor on the same body bytes: lz4 compress + one Ed25519 sign over
  them; lz4 decompress + one Ed25519 verify.
* ``scheme_floor`` — the least our signature scheme can cost with no framing and no lz4:
  BLAKE3-256 + Ed25519 over the 57-byte context+digest; the same for verify.
* ``image`` — turning pixels into the camera payloads and back (JPEG encode/decode; raw is a
  view), which happens outside the codec.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import blake3
import lz4.frame
import msgspec
import numpy as np

from bench.common import emit, environment, parser, ratio, stats_us, time_rounds
from edge_agent.scene import TabletopScene
from schemas.arrays import pack_array
from schemas.images import Codec, decode_image, encode_image
from schemas.messages import Frame
from security.keys import SIGNING_CONTEXT, Keyring, Signer
from security.replay import ReplayGuard
from vlabus.envelope import ENC_LZ4
from vlabus.wire import Decoder, Encoder

CASES: dict[str, list[tuple[int, int]]] = {
    "two_cams_224": [(224, 224), (224, 224)],
    "one_cam_480x640": [(480, 640)],
}
CODECS: tuple[Codec, ...] = ("raw", "jpeg")
TARGET = 1.25
DISTINCT = 4  # distinct rendered frames per case, cycled
DECODE_BATCH = 200  # envelopes (x3 copies) held for the decode run, each decoded once


def render(sizes: list[tuple[int, int]]) -> list[list[np.ndarray]]:
    scenes = [TabletopScene(h, w, seed=i) for i, (h, w) in enumerate(sizes)]
    return [[scene.render(step * 7) for scene in scenes] for step in range(DISTINCT)]


def make_frame(step: int, pixels: list[np.ndarray], codec: Codec) -> Frame:
    return Frame(
        robot_id="robot-a", step=step,
        cameras={f"cam{i}": encode_image(p, codec, 85) for i, p in enumerate(pixels)},
        command="pick up the red cube and place it in the bowl",
        state=pack_array(np.linspace(-1, 1, 14, dtype=np.float32)),
        capture_ns=time.time_ns(),
    )


def _cycle(items: list[Any]) -> Any:
    index = [0]

    def take() -> Any:
        item = items[index[0] % len(items)]
        index[0] += 1
        return item
    return take


def measure_case(sizes: list[tuple[int, int]], codec: Codec, count: int) -> dict[str, Any]:
    """Our path and its floors, timed in interleaved rounds on the same bytes."""
    renders = render(sizes)
    frames = [make_frame(i, px, codec) for i, px in enumerate(renders)]
    signer = Signer.generate("robot", "robot-a")
    public = signer.key.public_key()
    encoder = Encoder(signer)
    bodies = [msgspec.msgpack.encode(f) for f in frames]
    next_frame, next_body, next_body2 = _cycle(frames), _cycle(bodies), _cycle(bodies)

    def floor_encode() -> None:
        body = next_body()
        lz4.frame.compress(body, store_size=True)
        signer.key.sign(body)

    def scheme_encode() -> None:
        signer.key.sign(SIGNING_CONTEXT + blake3.blake3(next_body2()).digest())

    gc.collect()
    enc = time_rounds({"ours": lambda: encoder.encode(next_frame()), "floor": floor_encode,
                       "scheme": scheme_encode}, count)

    # Decode reads distinct envelopes, as a receiver does (a 300 KB message from the network
    # is not in cache). Each floor reads its own copy of the same envelopes, so no call finds
    # bytes another call just pulled into cache.
    wires = [encoder.encode(next_frame()) for _ in range(min(count, DECODE_BATCH))]
    views = [memoryview(bytes(w)) for w in wires]
    received = [memoryview(bytes(w))[len(w) - len(bodies[0]) - 64: len(w) - 64] for w in wires]
    packed = [lz4.frame.compress(b, store_size=True) for b in received]
    signatures = [signer.key.sign(b) for b in received]
    decoder = Decoder(Keyring([signer.public]), ReplayGuard(window=len(wires) + 16))
    at = _cycle(list(range(len(wires))))
    current = [0]

    def ours_decode() -> None:
        current[0] = at()
        decoder.decode(wires[current[0]])

    def floor_decode() -> None:
        i = current[0]
        lz4.frame.decompress(packed[i])
        public.verify(signatures[i], received[i])

    def scheme_decode() -> None:
        wire = views[current[0]]
        public.verify(wire[-64:], SIGNING_CONTEXT + blake3.blake3(wire[:-64]).digest())

    dec = time_rounds({"ours": ours_decode, "floor": floor_decode, "scheme": scheme_decode},
                      len(wires), warmup=0)
    compressed = sum(1 for v in views if decoder.read_header(v).enc & ENC_LZ4)

    next_px = _cycle(renders)
    next_cams = _cycle([list(f.cameras.values()) for f in frames])
    image = time_rounds({
        "encode": lambda: [encode_image(p, codec, 85) for p in next_px()],
        "decode": lambda: [decode_image(im) for im in next_cams()],
    }, max(count // 4, 20))

    ours = {"encode": stats_us(enc["ours"]), "decode": stats_us(dec["ours"])}
    floor = {"encode": stats_us(enc["floor"]), "decode": stats_us(dec["floor"])}
    scheme = {"encode": stats_us(enc["scheme"]), "decode": stats_us(dec["scheme"])}
    return {
        "cameras": [f"{h}x{w}x3" for h, w in sizes],
        "body_bytes": round(sum(map(len, bodies)) / len(bodies)),
        "wire_bytes": round(sum(map(len, wires)) / len(wires)),
        "lz4_ratio": round(sum(map(len, received)) / sum(map(len, packed)), 3),
        "compressed_fraction": round(compressed / len(wires), 3),
        "encode": ours["encode"],
        "decode": ours["decode"],
        "floor": floor,
        "scheme_floor": scheme,
        "image": {"encode": stats_us(image["encode"]), "decode": stats_us(image["decode"])},
        "ratio": _ratios(ours, floor),
        "ratio_vs_scheme_floor": _ratios(ours, scheme),
    }


def _ratios(ours: dict[str, dict[str, float]], base: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {f"{step}_{q}": ratio(ours[step][f"{q}_us"], base[step][f"{q}_us"])
            for step in ("encode", "decode") for q in ("p50", "p99")}


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    count = 120 if args.quick else 1000
    started = time.perf_counter()
    cases = {f"{name}/{codec}": measure_case(sizes, codec, count)
             for name, sizes in CASES.items() for codec in CODECS}
    raw = [c for name, c in cases.items() if name.endswith("/raw")]
    summary = {
        "target_ratio": TARGET,
        "raw_encode_ratio_p50_max": max(c["ratio"]["encode_p50"] for c in raw),
        "raw_decode_ratio_p50_max": max(c["ratio"]["decode_p50"] for c in raw),
        "raw_encode_vs_scheme_floor_p50_max": max(
            c["ratio_vs_scheme_floor"]["encode_p50"] for c in raw),
        "raw_decode_vs_scheme_floor_p50_max": max(
            c["ratio_vs_scheme_floor"]["decode_p50"] for c in raw),
    }
    summary["raw_within_target"] = (summary["raw_encode_ratio_p50_max"] <= TARGET
                                    and summary["raw_decode_ratio_p50_max"] <= TARGET)
    emit({
        "bench": "codec", "quick": args.quick, "samples": count, "env": environment(),
        "seconds": round(time.perf_counter() - started, 1), "cases": cases, "summary": summary,
        "notes": [
            "floor = lz4 compress + Ed25519 sign over the body bytes (decode: lz4 decompress + "
            "verify); our path signs BLAKE3(bytes) instead and skips lz4 when it does not pay "
            "(compressed_fraction), so it can beat that floor",
            "scheme_floor = BLAKE3 + Ed25519 over the 57-byte digest: the least any envelope "
            "with our signature scheme costs",
            "image.encode/decode is the JPEG codec work outside Encoder/Decoder (raw: a view)",
        ],
    }, compact=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
