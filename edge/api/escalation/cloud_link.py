"""What the edge knows about its cloud connection; shown in /status and as metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class CloudLink:
    url: str
    reachable: bool | None = None
    last_success_at: float | None = None
    last_failure_at: float | None = None
    last_error: str | None = None

    def succeeded(self) -> None:
        self.reachable = True
        self.last_success_at = time.time()
        self.last_error = None

    def failed(self, error: str) -> None:
        self.reachable = False
        self.last_failure_at = time.time()
        self.last_error = error
