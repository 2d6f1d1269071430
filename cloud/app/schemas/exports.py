"""Dataset export job responses: common.wire.dataset_export (with the request and the archive format)."""

from __future__ import annotations

from common.wire.dataset_export import ExportJobOut as ExportJobOut
