"""Small helpers shared by the benchmarks: timing loops, percentile stats, the JSON report.

Kept small and stable on purpose; other benchmarks import it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values (``q`` in 0..100)."""
    if not sorted_values:
        raise ValueError("no samples")
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return float(sorted_values[rank])


def stats_us(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/mean/min in microseconds, and the sample count."""
    values = sorted(samples_ns)
    return {
        "p50_us": round(percentile(values, 50) / 1000, 2),
        "p90_us": round(percentile(values, 90) / 1000, 2),
        "p99_us": round(percentile(values, 99) / 1000, 2),
        "mean_us": round(sum(values) / len(values) / 1000, 2),
        "min_us": round(values[0] / 1000, 2),
        "n": len(values),
    }


def time_each(call: Callable[[], object], count: int, *, warmup: int = 10) -> list[int]:
    """Run ``call`` ``warmup`` times untimed, then ``count`` times; each duration in ns."""
    for _ in range(warmup):
        call()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(count):
        start = clock()
        call()
        samples.append(clock() - start)
    return samples


def time_rounds(calls: dict[str, Callable[[], object]], count: int, *,
                warmup: int = 3) -> dict[str, list[int]]:
    """Time each call once per round, ``count`` rounds, interleaved so that background load
    and frequency changes hit every call alike; durations in ns by name."""
    for _ in range(warmup):
        for call in calls.values():
            call()
    samples: dict[str, list[int]] = {name: [] for name in calls}
    clock = time.perf_counter_ns
    for _ in range(count):
        for name, call in calls.items():
            start = clock()
            call()
            samples[name].append(clock() - start)
    return samples


def ratio(value: float, floor: float) -> float | None:
    """``value / floor`` rounded, or None when the floor is zero."""
    return round(value / floor, 3) if floor else None


def environment() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(terse=True),
    }


def single_thread_probe() -> dict[str, float]:
    """Best-of-five single-thread costs (µs) of the work on a secure round trip's critical path:
    interpreted Python, BLAKE3 of a 300 KB frame, an Ed25519 sign and verify. Two machines whose
    floors (wake-ups) match can still differ here, and the vlabus/floor ratio moves with it."""
    import blake3
    import nacl.bindings

    frame = bytes(range(256)) * 1176  # 301,056 bytes
    public, secret = nacl.bindings.crypto_sign_seed_keypair(b"\x01" * 32)
    signed = nacl.bindings.crypto_sign(b"\x00" * 64, secret)

    def loop() -> None:
        total = 0
        for i in range(10_000):
            total += i

    calls: dict[str, tuple[Callable[[], object], int]] = {
        "python_loop_10k_us": (loop, 20),
        "blake3_300k_us": (lambda: blake3.blake3(frame).digest(), 200),
        "ed25519_sign_us": (lambda: nacl.bindings.crypto_sign(b"\x00" * 64, secret), 500),
        "ed25519_verify_us": (lambda: nacl.bindings.crypto_sign_open(signed, public), 500),
    }
    out = {}
    for name, (call, count) in calls.items():
        call()
        best = math.inf
        for _ in range(5):
            start = time.perf_counter_ns()
            for _ in range(count):
                call()
            best = min(best, (time.perf_counter_ns() - start) / count / 1000)
        out[name] = round(best, 2)
    return out


def parser(description: str) -> argparse.ArgumentParser:
    """The common ``--json`` / ``--quick`` flags."""
    parse = argparse.ArgumentParser(description=description)
    parse.add_argument("--json", action="store_true", help="print one compact JSON object")
    parse.add_argument("--quick", action="store_true", help="fewer samples; under 20 s")
    return parse


def emit(report: dict[str, Any], *, compact: bool) -> None:
    """Print the report as one JSON object (indented unless ``compact``)."""
    json.dump(report, sys.stdout, indent=None if compact else 1)
    sys.stdout.write("\n")
