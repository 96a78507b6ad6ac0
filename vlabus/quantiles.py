"""Quantiles of bounded latency samples, for the ``--json`` summaries of every command."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def quantiles(samples: Iterable[float], qs: Sequence[float], *, scale: float = 1.0,
              digits: int = 3) -> dict[str, float]:
    """Linearly interpolated quantiles of ``samples / scale``, keyed ``p50``, ``p99``, … and
    ``max`` for ``q = 1.0``; all zero when there are no samples."""
    values = np.fromiter(samples, np.float64)
    if values.size == 0:
        return {quantile_name(q): 0.0 for q in qs}
    found = np.quantile(values, qs) / scale
    return {quantile_name(q): round(float(v), digits) for q, v in zip(qs, found, strict=True)}


def quantile_name(q: float) -> str:
    return "max" if q >= 1.0 else f"p{round(q * 100)}"
