"""Prometheus metrics of edge-api; one registry per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.image_queries = Counter(
            "edge_image_queries", "Image queries by outcome", ["detector_id", "outcome"], registry=r
        )
        self.rejected = Counter(
            "edge_rejected_requests", "Requests rejected as bad input", ["status"], registry=r
        )
        self.request_seconds = Histogram(
            "edge_image_query_seconds",
            "Time to answer an image query on the edge",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
            registry=r,
        )
        self.outbox_pending = Gauge("edge_outbox_pending", "Escalations waiting for the cloud", registry=r)
        self.outbox_dead = Gauge("edge_outbox_dead", "Escalations the cloud rejected (kept)", registry=r)
        self.escalations_queued = Counter(
            "edge_escalations_queued", "Escalations written to the outbox", ["reason"], registry=r
        )
        self.escalations_sent = Counter(
            "edge_escalations_sent", "Escalations acknowledged by the cloud", ["reason"], registry=r
        )
        self.escalation_send_failures = Counter(
            "edge_escalation_send_failures", "Failed escalation deliveries", ["kind"], registry=r
        )
        self.alert_firings = Counter(
            "edge_alert_firings", "Alert rules fired on this edge", ["detector_id", "rule_id"], registry=r
        )
        self.alert_firings_pending = Gauge(
            "edge_alert_firings_pending", "Alert firings waiting for the cloud", registry=r
        )
        self.alert_firings_dead = Gauge(
            "edge_alert_firings_dead", "Alert firings the cloud refused (kept, not resent)", registry=r
        )
        self.cloud_reachable = Gauge("edge_cloud_reachable", "1 when the cloud answered recently", registry=r)
        self._outcomes: dict[tuple[str, str], Counter] = {}

    def count_image_query(self, detector_id: str, outcome: str) -> None:
        """`image_queries` + 1, with the labelled child looked up once per (detector, outcome)."""
        child = self._outcomes.get((detector_id, outcome))
        if child is None:
            child = self._outcomes[(detector_id, outcome)] = self.image_queries.labels(detector_id, outcome)
        child.inc()
