"""Backbone registry and embedding store responses: common.wire.model_registry, under the names
cloud.app.core imports."""

from __future__ import annotations

from common.wire.model_registry import BackboneOut as BackboneOut
from common.wire.model_registry import EmbeddingsStored as EmbeddingsStored
