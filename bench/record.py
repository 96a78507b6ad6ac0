"""Recorder throughput and replay timing, against their raw-library floors.

    python -m bench.record --json [--quick]

* record: ``Recorder.write`` of pre-encoded signed envelopes (150 KB camera frames and 1 KB
  actions) to a file, 1 s flush interval; floors: plain ``file.write`` of the same bytes and the
  bare ``mcap`` Writer (1 MiB chunks, no compression, no periodic flush).
* replay schedule: a 200 Hz recording replayed at rate 1.0 onto ``memory://``; offset = actual
  minus intended send time. Floor: the same schedule with ``asyncio.sleep`` and no publishing.
* replay throughput: as fast as possible (rate 1e6); floor: reading the file with the upstream
  ``mcap`` reader alone.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from mcap.reader import make_reader
from mcap.writer import CompressionType, Writer

from bench.common import emit, environment, parser, percentile, ratio
from schemas.arrays import pack_array
from schemas.images import encode_image
from schemas.messages import Action, Frame
from security.keys import Signer
from vlabus.bus.memory import reset_memory
from vlabus.bus.transport import TransportOptions, open_transport
from vlabus.log.record import Recorder
from vlabus.log.replay import Replayer
from vlabus.wire import Encoder


def envelopes(count: int, kind: str) -> list[bytes]:
    rng = np.random.default_rng(0)
    if kind == "frame":
        encoder = Encoder(Signer.generate("robot", "robot-a"))
        pixels = rng.integers(0, 255, size=(224, 224, 3), dtype=np.uint8)
        frame = Frame(robot_id="robot-a", step=0, cameras={"front": encode_image(pixels)},
                      command="pick", state=pack_array(np.zeros(7, np.float32)), capture_ns=1)
        return [encoder.encode(frame) for _ in range(count)]
    encoder = Encoder(Signer.generate("worker", "worker-1"))
    action = Action(robot_id="robot-a", step=0, model="m", model_version=1, worker_id="worker-1",
                    actions=pack_array(rng.standard_normal((16, 14)).astype(np.float32)))
    return [encoder.encode(action) for _ in range(count)]


def rate_of(count: int, size: int, seconds: float) -> dict[str, float]:
    return {"msgs_per_s": round(count / seconds, 1), "mb_per_s": round(size / seconds / 1e6, 1)}


def bench_record(folder: Path, wires: list[bytes]) -> dict[str, Any]:
    size = sum(len(w) for w in wires)
    start = time.perf_counter()
    with open(folder / "raw.bin", "wb") as stream:
        for wire in wires:
            stream.write(wire)
    raw_s = time.perf_counter() - start

    start = time.perf_counter()
    with open(folder / "bare.mcap", "wb") as stream:
        writer = Writer(stream, compression=CompressionType.NONE)
        writer.start()
        channel = writer.register_channel("t", "msgpack", 0)
        for wire in wires:
            writer.add_message(channel, log_time=time.time_ns(), data=wire, publish_time=0)
        writer.finish()  # type: ignore[no-untyped-call]
    bare_s = time.perf_counter() - start

    start = time.perf_counter()
    with Recorder(folder / "rec.mcap") as recorder:
        for wire in wires:
            recorder.write("vla/v1/robot-a/frame", wire, time.time_ns())
    rec_s = time.perf_counter() - start
    return {"messages": len(wires), "bytes_each": len(wires[0]),
            "recorder": rate_of(len(wires), size, rec_s),
            "floor_file_write": rate_of(len(wires), size, raw_s),
            "floor_bare_mcap": rate_of(len(wires), size, bare_s),
            "ratio_vs_file_write": ratio(rec_s, raw_s), "ratio_vs_bare_mcap": ratio(rec_s, bare_s),
            "chunks_flushed": recorder.flushes}


def offsets_ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50_ms": round(percentile(ordered, 50), 3),
            "p99_ms": round(percentile(ordered, 99), 3),
            "max_ms": round(ordered[-1], 3), "n": len(ordered)}


async def sleep_floor(count: int, period_s: float) -> list[float]:
    t0 = time.monotonic()
    late = []
    for index in range(count):
        due = t0 + index * period_s
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        late.append((time.monotonic() - due) * 1000)
    return late


async def bench_replay(folder: Path, count: int) -> dict[str, Any]:
    path = folder / "schedule.mcap"
    wires = envelopes(count, "action")
    base = time.time_ns()
    with Recorder(path) as recorder:
        for index, wire in enumerate(wires):
            recorder.write("vla/v1/robot-a/action", wire, base + index * 5_000_000)  # 200 Hz
    reset_memory("bench-replay")
    bus = await open_transport("memory://bench-replay", TransportOptions(client_id="player"))
    sink = await open_transport("memory://bench-replay", TransportOptions(client_id="sink",
                                                                         inbox_size=1 << 20))
    await sink.subscribe("#")
    start = time.monotonic()
    stats = await Replayer(bus, path, rate=1.0).run()
    took = time.monotonic() - start
    floor = await sleep_floor(count, 0.005)

    fast = folder / "fast.mcap"
    frames = envelopes(count, "frame")
    with Recorder(fast) as recorder:
        for index, wire in enumerate(frames):
            recorder.write("vla/v1/robot-a/frame", wire, base + index * 1_000_000)
    start = time.perf_counter()
    fast_stats = await Replayer(bus, fast, rate=1e6).run()
    fast_s = time.perf_counter() - start
    start = time.perf_counter()
    with open(fast, "rb") as stream:
        read = sum(1 for _ in make_reader(stream).iter_messages())
    read_s = time.perf_counter() - start
    await bus.close()
    await sink.close()
    summary = stats.as_dict()
    return {
        "schedule": {"messages": summary["published"],
                     "recorded_span_s": summary["recorded_span_s"], "wall_s": round(took, 3),
                     "offset": summary["offset_ms"],
                     "floor_asyncio_sleep": offsets_ms(floor)},
        "throughput_150KB": {"messages": fast_stats.published,
                             "replay": rate_of(fast_stats.published, fast_stats.bytes, fast_s),
                             "floor_mcap_read": rate_of(read, fast_stats.bytes, read_s),
                             "ratio_vs_mcap_read": ratio(fast_s, read_s)},
    }


def main(argv: list[str] | None = None) -> int:
    args = parser(__doc__ or "").parse_args(argv)
    frames, actions, schedule = (300, 3000, 200) if args.quick else (1500, 20000, 1000)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        report = {
            "bench": "record", "quick": args.quick, "environment": environment(),
            "record_150KB_frames": bench_record(folder, envelopes(frames, "frame")),
            "record_1KB_actions": bench_record(folder, envelopes(actions, "action")),
            "replay": asyncio.run(bench_replay(folder, schedule)),
        }
    emit(report, compact=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
