"""Prometheus metrics of the updater; a registry per app so tests can run several."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class UpdaterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.polls = Counter(
            "updater_polls", "Model polls by outcome", ["detector_id", "outcome"], registry=r
        )
        self.deploys = Counter(
            "updater_deploys",
            "Versions put into service (source: cloud or disk)",
            ["detector_id", "source"],
            registry=r,
        )
        self.rejections = Counter(
            "updater_rejections",
            "Versions rejected (verification or warm-up failed)",
            ["detector_id"],
            registry=r,
        )
        self.failures = Gauge(
            "updater_consecutive_failures", "Poll errors in a row per detector", ["detector_id"], registry=r
        )
        self.heartbeats = Counter("updater_heartbeats", "Heartbeats to the cloud", ["outcome"], registry=r)
        self.backbone_downloads = Counter(
            "updater_backbone_downloads",
            "Shared backbones downloaded (installed, or rejected: wrong size or sha256)",
            ["outcome"],
            registry=r,
        )
        self.backbones_removed = Counter(
            "updater_backbones_removed", "Shared backbones removed: no kept version needed them", registry=r
        )
