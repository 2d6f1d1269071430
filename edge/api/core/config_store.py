"""The live edge config: loaded at start, replaced atomically by `PUT /edge-config` (no restart)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from common.edge_config import EdgeConfig, dump_edge_config, load_edge_config, parse_edge_config

log = logging.getLogger("edge.config")


class ConfigStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.config: EdgeConfig = load_edge_config(path) if path.exists() else parse_edge_config({})

    def apply(self, data: object) -> EdgeConfig:
        """Validate, persist (atomic rename), then swap in memory; a bad config changes nothing."""
        config = parse_edge_config(data)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".edge-config-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(dump_edge_config(config))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.config = config
        log.info("edge config applied", extra={"fields": {"detectors": len(config.detectors)}})
        return config
