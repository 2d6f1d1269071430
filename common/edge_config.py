"""Edge configuration (`config/edge-config.yaml`, `PUT /edge-config`), compatible with the SDK's models.

Unknown keys are ignored (the SDK's own rule), but every known key is validated, and an invalid file is
rejected with the dotted path of the bad field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.ids import is_detector_id


class EdgeConfigError(ValueError):
    """An edge config that cannot be applied; `errors` lists `path: message` lines."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class GlobalConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    refresh_rate: float = Field(default=60.0, gt=0, le=86400)
    confident_audit_rate: float = Field(default=1e-5, ge=0, le=1)


class InferenceConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    enabled: bool = True
    always_return_edge_prediction: bool = False
    disable_cloud_escalation: bool = False
    min_time_between_escalations: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _disable_needs_always_return(self) -> InferenceConfig:
        if self.disable_cloud_escalation and not self.always_return_edge_prediction:
            raise ValueError("disable_cloud_escalation requires always_return_edge_prediction")
        return self


PRESETS: dict[str, InferenceConfig] = {
    "default": InferenceConfig(),
    "edge_answers_with_escalation": InferenceConfig(always_return_edge_prediction=True),
    "no_cloud": InferenceConfig(always_return_edge_prediction=True, disable_cloud_escalation=True),
    "disabled": InferenceConfig(enabled=False),
}


class DetectorConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    detector_id: str
    edge_inference_config: str = "default"
    confidence_threshold: float | None = Field(default=None, ge=0, le=1)

    @field_validator("detector_id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        if not is_detector_id(value):
            raise ValueError("must be det_ followed by 27 base62 characters")
        return value


class EdgeConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    global_config: GlobalConfig = Field(default_factory=GlobalConfig)
    edge_inference_configs: dict[str, InferenceConfig] = Field(default_factory=dict)
    detectors: list[DetectorConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references_resolve(self) -> EdgeConfig:
        self.edge_inference_configs = {**PRESETS, **self.edge_inference_configs}
        seen: set[str] = set()
        for det in self.detectors:
            if det.detector_id in seen:
                raise ValueError(f"detector {det.detector_id} is listed twice")
            seen.add(det.detector_id)
            if det.edge_inference_config not in self.edge_inference_configs:
                raise ValueError(
                    f"detector {det.detector_id} uses undefined edge_inference_config "
                    f"{det.edge_inference_config!r}"
                )
        return self

    def detector(self, detector_id: str) -> DetectorConfig | None:
        return next((d for d in self.detectors if d.detector_id == detector_id), None)

    def inference_config(self, detector: DetectorConfig) -> InferenceConfig:
        return self.edge_inference_configs[detector.edge_inference_config]


def parse_edge_config(data: Any) -> EdgeConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise EdgeConfigError(["<root>: must be a mapping"])
    try:
        return EdgeConfig.model_validate(data)
    except ValidationError as exc:
        raise EdgeConfigError(
            [f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()]
        ) from None


def load_edge_config(path: Path) -> EdgeConfig:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise EdgeConfigError([f"<yaml>: {exc}"]) from None
    return parse_edge_config(data)


def dump_edge_config(config: EdgeConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
