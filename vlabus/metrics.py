"""Prometheus metrics endpoint with health and readiness on the same port.

``/metrics`` (Prometheus text format), ``/healthz`` (200 while the process serves),
``/readyz`` (200 once ``ready`` is set, e.g. after model warm-up; 503 before).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class MetricsServer:
    """Serves one registry on ``host:port`` from a daemon thread; ``port=0`` picks a free one."""

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0) -> None:
        self.registry = registry
        self.ready = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, generate_latest(server.registry), CONTENT_TYPE_LATEST)
                elif self.path == "/healthz":
                    self._send(200, b"ok\n", "text/plain")
                elif self.path == "/readyz":
                    ok = server.ready.is_set()
                    self._send(200 if ok else 503, b"ready\n" if ok else b"warming\n",
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
                ("revoked", "revoked", "Subscriptions cancelled by a reload's rules")):
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
