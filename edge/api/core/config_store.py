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
        config = parse_edge_config(data)
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
        log.info("edge config applied", extra={"fields": {"detectors": len(config.detectors)}})
        return config
