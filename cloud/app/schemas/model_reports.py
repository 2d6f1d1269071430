"""Training reports of a model version: common.wire.model_registry, under the names the cloud imports."""

from __future__ import annotations

from common.wire.model_registry import ModelReportList as ModelReportList
from common.wire.model_registry import ModelReportOut as ModelReportOut
from common.wire.model_registry import ReportName as ReportName
