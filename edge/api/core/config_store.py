"""The live edge config: loaded at start, replaced atomically by `PUT /edge-config` (no restart).

An applied config is persisted in the data directory, not over the operator's file (which may be a
read-only mount and carries comments). At start the newer of the two wins, so both an edit of the
file and a config applied through the API survive a restart.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from common.edge_config import EdgeConfig, dump_edge_config, load_edge_config, parse_edge_config

log = logging.getLogger("edge.config")

APPLIED_FILE = "edge-config.applied.yaml"


class ConfigStore:
    def __init__(self, path: Path, data_dir: Path) -> None:
        self.path = path
        self.applied_path = data_dir / APPLIED_FILE
        self.source = self._pick_source()
        self.config: EdgeConfig = load_edge_config(self.source) if self.source else parse_edge_config({})
        log.info("edge config loaded", extra={"fields": {"source": str(self.source)}})

    def _pick_source(self) -> Path | None:
        existing = [p for p in (self.path, self.applied_path) if p.exists()]
        return max(existing, key=lambda p: p.stat().st_mtime) if existing else None

    def apply(self, data: object) -> EdgeConfig:
        """Validate, persist (atomic rename), then swap in memory; a bad config changes nothing."""
        config = parse_edge_config(self._keep_streams(data))
        target = self.applied_path
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".edge-config-", dir=target.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(dump_edge_config(config))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.config = config
        self.source = target
        log.info(
            "edge config applied",
            extra={"fields": {"detectors": len(config.detectors), "streams": len(config.streams)}},
        )
        return config

    def _keep_streams(self, data: object) -> object:
        """The SDK's `apply_config` never sends `streams`: a config without the key keeps the current
        streams whose detector it still configures, so applying detectors does not stop the cameras."""
        if not isinstance(data, dict) or "streams" in data or not self.config.streams:
            return data
        raw_detectors = data.get("detectors")
        detector_ids = (
            {d.get("detector_id") for d in raw_detectors if isinstance(d, dict)}
            if isinstance(raw_detectors, list)
            else set()
        )
        kept = [s for s in self.config.streams if s.detector_id in detector_ids]
        dropped = [s.name for s in self.config.streams if s.detector_id not in detector_ids]
        if dropped:
            log.warning(
                "streams dropped: their detector is no longer configured",
                extra={"fields": {"streams": dropped}},
            )
        return {**data, "streams": [s.model_dump(mode="json") for s in kept]}
