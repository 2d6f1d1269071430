"""Prometheus metrics of the streams service, read from the workers at scrape time (a stream that was
removed disappears; one that was restarted with new settings starts its counters again)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from edge.streams.supervisor import ConfigPoller, StreamSupervisor

_COUNTERS = (
    ("frames_read", "Frames read from the source"),
    ("frames_submitted", "Frames submitted as image queries"),
    ("frames_skipped_motion", "Frames skipped because the scene had not changed (motion gating)"),
    ("submit_errors", "Frames edge-api did not accept or could not be reached for"),
    ("reconnects", "Connections to the source re-established after a drop"),
    ("connect_failures", "Failed attempts to open the source"),
)


class StreamsCollector(Collector):
    def __init__(self, supervisor: StreamSupervisor, poller: ConfigPoller) -> None:
        self._supervisor = supervisor
        self._poller = poller

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        workers = self._supervisor.workers()
        labels = ["stream", "detector_id"]
        counters = {
            attr: CounterMetricFamily(f"edge_stream_{attr}", help_text, labels=labels)
            for attr, help_text in _COUNTERS
        }
        connected = GaugeMetricFamily("edge_stream_connected", "1 while the source delivers", labels=labels)
        frame_age = GaugeMetricFamily(
            "edge_stream_last_frame_age_seconds", "Seconds since the last frame was read", labels=labels
        )
        submit_age = GaugeMetricFamily(
            "edge_stream_last_submit_age_seconds",
            "Age of the last submitted frame when it was sent",
            labels=labels,
        )
        rate = GaugeMetricFamily(
            "edge_stream_submit_fps", "Frames submitted per second, recent window", labels=labels
        )
        for w in workers:
            values = [w.name, w.config.detector_id]
            for attr, family in counters.items():
                family.add_metric(values, float(getattr(w, attr)))
            connected.add_metric(values, 1.0 if w.connected else 0.0)
            age = w.last_frame_age_s()
            if age is not None:
                frame_age.add_metric(values, age)
            if w.last_submit_age_s is not None:
                submit_age.add_metric(values, w.last_submit_age_s)
            rate.add_metric(values, w.submit_rate())
        yield from counters.values()
        yield from (connected, frame_age, submit_age, rate)
        configured = GaugeMetricFamily("edge_streams_configured", "Streams in the edge config")
        configured.add_metric([], float(len(self._supervisor.configs)))
        yield configured
        config_ok = GaugeMetricFamily("edge_streams_config_ok", "1 when the last edge-config poll succeeded")
        config_ok.add_metric([], 1.0 if self._poller.fetched_at and self._poller.error is None else 0.0)
        yield config_ok


def new_registry(supervisor: StreamSupervisor, poller: ConfigPoller) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(StreamsCollector(supervisor, poller))
    return registry
