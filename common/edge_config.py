"""Edge configuration (`config/edge-config.yaml`, `PUT /edge-config`), compatible with the SDK's models.

Unknown keys are ignored (the SDK's own rule), but every known key is validated, and an invalid file is
rejected with the dotted path of the bad field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

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


STREAM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
STREAM_URL_SCHEMES = ("rtsp", "rtsps", "http", "https", "file")
MAX_STREAM_FPS = 30.0


class StreamConfig(BaseModel):
    """A camera stream or file source that edge/streams reads and submits as image queries.

    `url` is an RTSP URL, an HTTP(S) MJPEG URL, a video file, or a directory of images (a path, or
    file:// URL); whether a path is a file or a directory is decided where the streams service runs.
    """

    model_config = ConfigDict(extra="ignore")

    name: str
    url: str
    detector_id: str
    fps: float = Field(default=1.0, gt=0, le=MAX_STREAM_FPS)
    # Submit a frame only when it differs from the last submitted one by at least this mean absolute
    # pixel difference (0..1, on a small grey copy of the frame); None submits every frame.
    motion_threshold: float | None = Field(default=None, ge=0, le=1)
    reconnect_initial_s: float = Field(default=1.0, gt=0, le=3600)
    reconnect_max_s: float = Field(default=30.0, gt=0, le=3600)
    # Opening the source, and each read, gives up after this long (a stalled camera counts as dropped).
    timeout_s: float = Field(default=10.0, gt=0, le=300)
    # RTSP only: how the media travels. Most cameras take tcp; some relays accept only udp.
    rtsp_transport: Literal["tcp", "udp", "udp_multicast", "http"] = "tcp"
    # Video files and image folders: start again at the end (a folder is listed again each pass).
    loop: bool = True
    enabled: bool = True

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not STREAM_NAME_RE.match(value):
            raise ValueError("must be 1-64 of A-Z a-z 0-9 _ . - and start with a letter or digit")
        return value

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be empty")
        scheme = urlsplit(value).scheme.lower()
        # One-letter "schemes" are Windows drive letters, i.e. paths.
        if len(scheme) > 1 and scheme not in STREAM_URL_SCHEMES:
            raise ValueError(
                f"unsupported scheme {scheme!r}: use rtsp://, rtsps://, http(s)://, file:// or a path"
            )
        if scheme in ("rtsp", "rtsps", "http", "https") and not urlsplit(value).hostname:
            raise ValueError("has no host")
        try:
            _ = urlsplit(value).port  # parsed lazily: an out-of-range port would fail later, when shown
        except ValueError:
            raise ValueError("has a port that is not a number from 0 to 65535") from None
        return value

    @field_validator("detector_id")
    @classmethod
    def _valid_detector_id(cls, value: str) -> str:
        if not is_detector_id(value):
            raise ValueError("must be det_ followed by 27 base62 characters")
        return value

    @model_validator(mode="after")
    def _backoff_order(self) -> StreamConfig:
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError("reconnect_max_s must be at least reconnect_initial_s")
        return self


def redact_url(url: str) -> str:
    """A stream URL without its password, for status pages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _field_error(loc: tuple[str | int, ...], message: str, value: Any) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError("edge_config", message), loc=loc, input=value)


class EdgeConfig(BaseModel):
    model_config = ConfigDict(extra="ignore")

    global_config: GlobalConfig = Field(default_factory=GlobalConfig)
    edge_inference_configs: dict[str, InferenceConfig] = Field(default_factory=dict)
    detectors: list[DetectorConfig] = Field(default_factory=list)
    streams: list[StreamConfig] = Field(default_factory=list)

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
        self._check_streams(seen)
        return self

    def _check_streams(self, detector_ids: set[str]) -> None:
        """Stream names are unique and each names a detector of this config; errors carry the path."""
        errors: list[InitErrorDetails] = []
        names: set[str] = set()
        for i, stream in enumerate(self.streams):
            if stream.name in names:
                errors.append(_field_error(("streams", i, "name"), "is used by another stream", stream.name))
            names.add(stream.name)
            if stream.detector_id not in detector_ids:
                errors.append(
                    _field_error(
                        ("streams", i, "detector_id"),
                        "is not a detector of this edge config (add it under detectors)",
                        stream.detector_id,
                    )
                )
        if errors:
            raise ValidationError.from_exception_data("EdgeConfig", errors)

    def detector(self, detector_id: str) -> DetectorConfig | None:
        return next((d for d in self.detectors if d.detector_id == detector_id), None)

    def inference_config(self, detector: DetectorConfig) -> InferenceConfig:
        return self.edge_inference_configs[detector.edge_inference_config]

    def stream(self, name: str) -> StreamConfig | None:
        return next((s for s in self.streams if s.name == name), None)


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
