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
