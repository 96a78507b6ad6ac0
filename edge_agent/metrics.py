"""Prometheus metrics of one robot (``vlabus_edge_*``), on their own registry.

Labels are bounded: sources, causes, rejection reasons and update results are closed sets.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from schemas.errors import Reason
from vlabus.metrics import LATENCY_BUCKETS

_LATENCY_BUCKETS = LATENCY_BUCKETS  # resolve 1–20 ms (see vlabus.metrics)
_LATENESS_BUCKETS = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05)


class EdgeMetrics:
    """The robot's counters; the agent calls these, the CLI serves ``registry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        reg = self.registry
        self.actions = Counter("vlabus_edge_actions_total", "Actions executed, by source",
                               ["source"], registry=reg)
        self.fallbacks = Counter("vlabus_edge_fallbacks_total", "Local fallbacks, by cause",
                                 ["cause"], registry=reg)
        self.round_trip = Histogram("vlabus_edge_round_trip_seconds",
                                    "Frame encode to verified action, robot clock",
                                    buckets=_LATENCY_BUCKETS, registry=reg)
        self.lateness = Histogram("vlabus_edge_lateness_seconds",
                                  "How long after its deadline a step's action was ready",
                                  buckets=_LATENESS_BUCKETS, registry=reg)
        self.late_replies = Counter("vlabus_edge_late_replies_total",
                                    "Cloud actions discarded because their step was decided",
                                    registry=reg)
        self.rejected = Counter("vlabus_edge_rejected_total", "Inbound messages rejected",
                                ["reason"], registry=reg)
        self.model_version = Gauge("vlabus_edge_model_version", "Local policy version in use",
                                   registry=reg)
        self.model_updates = Counter("vlabus_edge_model_updates_total",
                                     "Model update outcomes, by result", ["result"], registry=reg)
        self.download_missing = Gauge("vlabus_edge_model_download_missing_chunks",
                                      "Chunks the open model download still lacks (0: none open)",
                                      registry=reg)
        self.download_idle = Gauge("vlabus_edge_model_download_idle_seconds",
                                   "Since the open model download last made progress (0: none)",
                                   registry=reg)
        self.breaker_open = Gauge("vlabus_edge_breaker_open",
                                  "1 while the robot is local-only", registry=reg)
        self.latency_parts = Histogram("vlabus_edge_latency_part_seconds",
                                       "Round trip split into parts, each timed on one side",
                                       ["part"], buckets=_LATENCY_BUCKETS, registry=reg)
        self.frames = Counter("vlabus_edge_frames_sent_total", "Frames sent to the cloud",
                              registry=reg)
        self.camera_images = Counter("vlabus_edge_camera_images_total",
                                     "Camera images sent, by codec rung (edge_agent.codec)",
                                     ["codec"], registry=reg)
        self.frame_bytes = Counter("vlabus_edge_frame_bytes_total",
                                   "Bytes of signed frames sent", registry=reg)
        self.uplink = Gauge("vlabus_edge_uplink_bits_per_second",
                            "Uplink rate seen from reply timings (0 before the first reply)",
                            registry=reg)

    def frame_sent(self, choice: Mapping[str, str], nbytes: int) -> None:
        """One frame went out with ``choice`` (rung per camera) as ``nbytes``."""
        for rung in choice.values():
            self.camera_images.labels(rung).inc()
        self.frame_bytes.inc(nbytes)

    def on_reject(self, reason: Reason) -> None:
        """Count one rejected inbound message (the hook of ``vlabus.inbound.Rejections``)."""
        self.rejected.labels(reason.value).inc()
