"""Model registry responses: common.wire.model_registry, under the names cloud.app.core imports."""

from __future__ import annotations

from common.wire.model_registry import ModelVersionDetail as ModelVersionDetail
from common.wire.model_registry import ModelVersionList as ModelVersionList
from common.wire.model_registry import ModelVersionOut as ModelVersionOut
