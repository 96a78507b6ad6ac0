"""Prometheus metrics endpoint with health and readiness on the same port.

``/metrics`` (Prometheus text format), ``/healthz`` (200 while the process serves),
``/readyz`` (200 once ``ready`` is set, e.g. after model warm-up; 503 before).

What operators expect on top of a component's own series: the process and Python collectors
(``process_*``, ``python_*``), ``vlabus_build_info{version,python}``, and with ``labels`` (e.g.
``{"worker": "worker-3"}``) that identity on every series, so scaled replicas behind one
Service can be told apart. Latency histograms use :data:`LATENCY_BUCKETS`, which resolve
1–20 ms in steps of 1–2 ms.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: Seconds. Fine where vlabus round trips live (1–20 ms), coarse beyond.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.0025, 0.003, 0.004, 0.005,
                   0.006, 0.007, 0.008, 0.009, 0.01, 0.012, 0.014, 0.016, 0.018, 0.02, 0.025,
                   0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


class Labelled(Collector):
    """Every series of ``registry`` with ``labels`` added (the process's identity)."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]) -> None:
        self._registry = registry
        self._labels = labels

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            copy = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            copy.samples = [sample._replace(labels={**sample.labels, **self._labels})
                            for sample in metric.samples]
            yield copy


def serving_registry(registry: CollectorRegistry,
                     labels: dict[str, str] | None = None) -> CollectorRegistry:
    """``registry`` plus the process, Python and GC collectors and ``vlabus_build_info``,
    every series carrying ``labels``."""
    import platform

    from prometheus_client import Gauge, GCCollector, PlatformCollector, ProcessCollector

    from vlabus import version

    standard = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=standard)
    PlatformCollector(registry=standard)
    GCCollector(registry=standard)
    Gauge("vlabus_build_info", "vlabus build: version and Python; always 1",
          ["version", "python"], registry=standard).labels(
              version(), platform.python_version()).set(1)
    served = CollectorRegistry(auto_describe=True)
    served.register(Labelled(registry, labels or {}))
    served.register(Labelled(standard, labels or {}))
    return served


class MetricsServer:
    """Serves one registry on ``host:port`` from a daemon thread; ``port=0`` picks a free one.
    ``labels`` (the identity) go on every series; process and build series are added."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0,
                 labels: dict[str, str] | None = None) -> None:
        self.registry = serving_registry(registry, labels)
        self.ready = threading.Event()
        #: checked on each /readyz once ``ready`` is set (the connection, a stalled loop)
        self.readiness: Callable[[], bool] | None = None
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    self._send(200, b"ok\n", "text/plain")
                elif self.path == "/readyz":
                    check = server.readiness
                    ok = server.ready.is_set() and (check is None or check())
                    self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n",
                               "text/plain")
                else:
                    self._send(404, b"not found\n", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="metrics",
                                        daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


class HubCollector(Collector):
    """The hub's counters as Prometheus series, read at scrape time from ``counters()``
    (:meth:`vlabus.hub.server.Hub.counters`): nothing is added to the hub's message path."""

    def __init__(self, counters: Callable[[], dict[str, int]]) -> None:
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        c = self._counters()
        for name, key, text in (
                ("received", "received", "Messages received from clients"),
                ("delivered", "delivered", "Messages sent to subscribers"),
                ("denied", "denied", "Publishes, subscriptions and wills refused by the "
                 "access rules"),
                ("malformed", "malformed", "Client messages that were not the hub protocol, "
                 "or named an invalid topic"),
                ("wills", "wills", "Wills published for clients that vanished"),
                ("disconnects", "disconnects", "Client connections lost"),
                ("reloads", "reloads", "Keys and access rules read again (SIGHUP)"),
                ("revoked", "revoked", "Subscriptions cancelled by a reload's rules"),
                ("too_large", "too_large", "Publishes and wills refused for a payload over "
                 "the deployment's limit")):
            yield CounterMetricFamily(f"vlabus_hub_{name}", text, value=c[key])
        dropped = CounterMetricFamily("vlabus_hub_dropped", "Messages not delivered",
                                      labels=["cause"])
        for cause, key in (("hwm", "dropped_hwm"), ("unroutable", "dropped_unroutable"),
                           ("expired", "expired")):
            dropped.add_metric([cause], c[key])
        yield dropped
        yield GaugeMetricFamily("vlabus_hub_clients", "Clients connected", value=c["clients"])
        yield GaugeMetricFamily("vlabus_hub_retained_topics", "Topics holding a retained message",
                                value=c["retained"])


class CountersCollector(Collector):
    """``counters()`` read at scrape time as ``{prefix}_{name}_total`` counters (a recorder's,
    a replayer's): nothing is added to the message path."""

    def __init__(self, prefix: str, counters: Callable[[], dict[str, int]],
                 help_text: dict[str, str] | None = None) -> None:
        self._prefix = prefix
        self._counters = counters
        self._help = help_text or {}

    def collect(self) -> Iterator[Metric]:
        for name, value in self._counters().items():
            yield CounterMetricFamily(f"{self._prefix}_{name}", self._help.get(name, name),
                                      value=value)
