"""Metrics operators expect: process and Python series, vlabus_build_info, the identity on every
series, and latency buckets that resolve 1–20 ms."""

from __future__ import annotations

import itertools
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from cloud_workers.metrics import WorkerMetrics
from vlabus import version
from vlabus.metrics import LATENCY_BUCKETS, MetricsServer


def test_every_series_carries_the_identity_and_the_standard_ones_are_there() -> None:
    metrics = WorkerMetrics()
    metrics.inference.observe(0.0084)
    server = MetricsServer(metrics.registry, labels={"worker": "worker-7"}).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        server.close()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    assert samples
    assert all(s.labels.get("worker") == "worker-7" for s in samples)
    names = {s.name for s in samples}
    assert "process_cpu_seconds_total" in names
    assert "python_info" in names
    build = [s for s in samples if s.name == "vlabus_build_info"]
    assert build[0].labels["version"] == version()
    assert build[0].value == 1
    # an 8.4 ms inference lands between the 8 and 9 ms bounds, not in a 5–10 ms bucket
    buckets = {s.labels["le"]: s.value for s in samples
               if s.name == "vlabus_worker_inference_seconds_bucket"}
    assert buckets["0.008"] == 0
    assert buckets["0.009"] == 1


def test_buckets_resolve_one_to_twenty_ms() -> None:
    inside = [b for b in LATENCY_BUCKETS if 0.001 <= b <= 0.02]
    steps = [b - a for a, b in itertools.pairwise(inside)]
    assert inside[0] == 0.001
    assert inside[-1] == 0.02
    assert max(steps) <= 0.002 + 1e-12


def test_live_view_percentiles_agree_with_the_samples() -> None:
    import numpy as np
    from prometheus_client import CollectorRegistry, Histogram
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families as parse

    from vlabus.cli.liveview import histogram_quantile

    rng = np.random.default_rng(3)
    samples = np.concatenate([rng.normal(0.0084, 0.0008, 900), rng.uniform(0.012, 0.021, 100)])
    registry = CollectorRegistry()
    rtt = Histogram("rtt_seconds", "x", buckets=LATENCY_BUCKETS, registry=registry)
    for value in samples:
        rtt.observe(float(value))
    scraped = {f"{s.name}{{le={s.labels['le']}}}" if "le" in s.labels else s.name: s.value
               for family in parse(generate_latest(registry).decode()) for s in family.samples}
    for q in (0.5, 0.99):
        from_buckets = histogram_quantile(q, {}, scraped, "rtt_seconds")
        assert from_buckets is not None
        # within one bucket (1 ms below 10 ms, 2 ms below 20 ms) of the samples' own quantile
        assert abs(from_buckets - float(np.quantile(samples, q))) < 0.002


def test_live_view_totals_never_go_backwards_and_the_clock_stops() -> None:
    from vlabus.cli.liveview import Totals, WorkerRow, render, worker_row

    totals = Totals()
    assert totals("worker-1", "served", 40) == 40
    assert totals("worker-1", "served", 3) == 43  # restarted: counts from zero again
    assert totals("worker-1", "served", 10) == 50
    gone = worker_row("worker-1", {"vlabus_worker_replies_total": 12.0}, {}, totals)
    assert gone.served >= 50
    assert not gone.up
    frame = render(23.7, 20.0, [], [WorkerRow("w", True, None, 0, 1)], [])
    assert "t= 20.0/20 s" in frame
