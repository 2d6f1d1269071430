"""The box's own HTTP contracts (common.wire.updater_status, streams_status, edge_status, hub_heartbeat),
in process: each side builds the model and the JSON is what it was as a plain dict; edge-api parses a
peer's status into the embedded model and reports a peer whose answer does not parse as unreachable."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, ValidationError

from common.edge_config import StreamConfig
from common.wire import edge_status, hub_heartbeat, streams_status, updater_status
from common.wire.edge_status import (
    EdgeStatus,
    InferenceReport,
    StreamsReport,
    StreamsUnreachable,
    UpdaterReport,
    UpdaterUnreachable,
)
from common.wire.hub_heartbeat import MAX_INFO_BYTES, HubHeartbeat
from common.wire.inference import SwapResult
from common.wire.streams_status import StreamsStatus
from common.wire.updater_status import InstalledBackbone, PollError, RejectedVersion
from edge.api.routes.health import _streams_status, _updater_status
from edge.streams.supervisor import StreamSupervisor
from edge.streams.worker import EdgeClient, StreamWorker
from edge.updater.clients import EdgeApiClient, RegistryClient, SwapClient
from edge.updater.core import DetectorPoller, DetectorState, Outcome, Source
from edge.updater.installer import Installer
from edge.updater.metrics import UpdaterMetrics
from edge.updater.runner import RECENT_ERRORS, Updater
from edge.updater.settings import UpdaterSettings

DET = "det_2Z3Yb8kq0cJ1mHq3T9rWnXbV5aD"
OTHER = "det_2Z3Yb8kq0cJ1mHq3T9rWnXbV5aE"
SHA = "a" * 64
UPDATER_URL = "http://updater:8721"
STREAMS_URL = "http://streams:8720"


def round_trips(model: BaseModel) -> dict[str, Any]:
    """The model's JSON, after checking that parsing it gives the same model back."""
    data = model.model_dump(mode="json")
    assert type(model).model_validate_json(json.dumps(data)) == model
    return data


# -- the updater --------------------------------------------------------------------------------------


@pytest.fixture
async def updater(tmp_path: Path):
    # Nothing answers: edge-api's facts are unknown, and no request leaves the process.
    nobody = httpx.MockTransport(lambda request: httpx.Response(503))
    clients = [
        httpx.AsyncClient(base_url=url, transport=nobody)
        for url in ("http://cloud:8000", "http://inference:8001", "http://edge-api:8718/")
    ]
    cloud, inference, edge_api = clients
    settings = UpdaterSettings(
        cloud_url="http://cloud:8000",
        model_root=tmp_path,
        edge_id="edge-line-3",
        heartbeat_interval_s=30.0,
        no_model_refresh_s=5.0,
    )
    registry = RegistryClient(cloud, settings.token, 30)
    installer = Installer(tmp_path)
    yield Updater(
        settings,
        DetectorPoller(registry, SwapClient(inference), installer),
        registry,
        EdgeApiClient(edge_api),
        installer,
        UpdaterMetrics(),
    )
    for client in clients:
        await client.aclose()


def troubled_state() -> DetectorState:
    state = DetectorState(DET, version="v1", outcome=Outcome.REJECTED, detail="bad", polled_at=10.0)
    state.deployed_at, state.deployed_from, state.failures = 5.0, Source.CLOUD, 0
    state.last_error, state.last_error_at = "version v2 rejected: bad", 10.5
    state.rejected = RejectedVersion(version="v2", reason="bad", at=10.5)
    state.next_poll_at, state.delay_s = 70.0, 60.0
    return state


def test_a_detector_s_poll_state_is_reported_as_before():
    assert round_trips(troubled_state().snapshot()) == {
        "detector_id": DET,
        "version": "v1",
        "outcome": "rejected",
        "detail": "bad",
        "polled_at": 10.0,
        "deployed_at": 5.0,
        "deployed_from": "cloud",
        "consecutive_failures": 0,
        "last_error": "version v2 rejected: bad",
        "last_error_at": 10.5,
        "rejected": {"version": "v2", "reason": "bad", "at": 10.5},
        "next_poll_at": 70.0,
        "delay_s": 60.0,
    }
    assert round_trips(DetectorState(OTHER).snapshot())["outcome"] is None


async def test_the_updater_status_keeps_its_shape(updater: Updater):
    backbones = [InstalledBackbone(sha256=SHA, id="resnet", bytes=123, used_by=[f"{DET}/v1"])]
    data = round_trips(updater.snapshot(backbones))
    assert isinstance(data.pop("uptime_s"), float)
    assert data == {
        "edge_id": "edge-line-3",
        "cloud_url": "http://cloud:8000",
        "model_root": str(updater.settings.model_root),
        "refresh_rate_s": None,
        "refresh_rate_source": "edge config global_config.refresh_rate",
        "config": {"source": "http://edge-api:8718/edge-config", "fetched_at": None, "error": None},
        "heartbeat": {"interval_s": 30.0, "last_at": None, "error": None, "outbox_depth": None},
        "no_model_refresh_s": 5.0,
        "detectors": [],
        "backbones": [{"sha256": SHA, "id": "resnet", "bytes": 123, "used_by": [f"{DET}/v1"]}],
        "recent_errors": [],
    }


async def test_the_heartbeat_body_keeps_its_shape_and_leaves_an_unset_name_out(updater: Updater):
    loop = SimpleNamespace(state=troubled_state())
    updater._loops = {DET: loop}  # type: ignore[dict-item]
    updater.outbox_depth, updater.outbox_dead = 4, 1
    updater.refresh_rate_s = 60.0
    backbones = [InstalledBackbone(sha256=SHA, id=None, bytes=None, used_by=[f"{DET}/v1", f"{OTHER}/v3"])]
    body = updater.heartbeat_body({DET: "v1"}, backbones)
    assert body is not None

    sent: list[dict[str, Any]] = []

    def cloud(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        return httpx.Response(200, json={})

    async with httpx.AsyncClient(base_url="http://cloud", transport=httpx.MockTransport(cloud)) as http:
        await RegistryClient(http, lambda: "tok", 10).heartbeat(body)
    assert sent == [
        {
            "edge_id": "edge-line-3",
            "deployed_versions": {DET: "v1"},
            "outbox_depth": 4,
            "info": {
                "updater": {
                    "refresh_rate_s": 60.0,
                    "detectors_polled": 1,
                    "config_error": None,
                    "edge_api_error": None,
                    "outbox_depth_known": True,
                    "outbox_dead": 1,
                    "outbox_oldest_pending_age_s": None,
                    "detectors": {
                        DET: {
                            "outcome": "rejected",
                            "version": "v1",
                            "consecutive_failures": 0,
                            "last_error": "version v2 rejected: bad",
                            "rejected": {"version": "v2", "reason": "bad"},
                        }
                    },
                    "recent_errors": [],
                    "backbones": [{"sha256": SHA, "id": None, "bytes": None, "used_by": 2}],
                }
            },
        }
    ]
    assert HubHeartbeat.model_validate(sent[0]) == body  # what the cloud parses


async def test_a_heartbeat_the_cloud_would_refuse_is_not_sent_and_says_why(updater: Updater):
    for _ in range(RECENT_ERRORS):
        updater.recent_errors.append(
            PollError(at=1.0, detector_id=DET, outcome=Outcome.ERROR, error="x" * (MAX_INFO_BYTES // 8))
        )
    assert await updater.heartbeat_once() is False
    assert updater.heartbeat_error is not None
    assert "would refuse its info" in updater.heartbeat_error
    assert str(MAX_INFO_BYTES) in updater.heartbeat_error


def test_the_cloud_still_takes_any_info_and_refuses_what_it_refused():
    free_form = {"edge_id": "edge-1", "info": {"updater": "an older edge", "other": [1, {"a": None}]}}
    assert HubHeartbeat.model_validate(free_form).info == free_form["info"]
    for bad in (
        {"edge_id": "-starts-with-a-dash"},
        {"edge_id": "e" * 101},
        {"edge_id": "edge-1", "deployed_versions": {"det 1": "v1"}},
        {"edge_id": "edge-1", "info": {"big": "x" * MAX_INFO_BYTES}},
        {"edge_id": "edge-1", "info": {"nul": "a\x00b"}},
    ):
        with pytest.raises(ValidationError):
            HubHeartbeat.model_validate(bad)


async def test_the_swap_answer_is_parsed_into_its_model():
    answer = {"detector_id": DET, "version": "v2", "previous_version": "v1", "swapped": True, "load_ms": 3.5}
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=answer))
    async with httpx.AsyncClient(base_url="http://inference", transport=transport) as http:
        result = await SwapClient(http).swap(DET)
    assert result == SwapResult(**answer)


# -- the streams service ------------------------------------------------------------------------------


def test_a_stream_s_status_keeps_its_shape():
    client = EdgeClient("http://gateway:30101", 5.0)
    try:
        running = StreamConfig(name="door", url="rtsp://user:secret@cam/live", detector_id=DET, fps=2.0)
        worker = StreamWorker(running, client)
        data = round_trips(worker.snapshot())
        supervisor = StreamSupervisor(client)
        off = StreamConfig(name="yard", url="/videos/yard.mp4", detector_id=DET, enabled=False)
        supervisor.apply([off])
        (disabled,) = supervisor.snapshot()
    finally:
        client.close()
    assert "secret" not in data["url"]
    assert data["started_at"] == worker.started_at
    assert {k: v for k, v in data.items() if k not in ("url", "started_at")} == {
        "name": "door",
        "kind": "rtsp",
        "detector_id": DET,
        "enabled": True,
        "fps": 2.0,
        "motion_threshold": None,
        "state": "starting",
        "connected": False,
        "error": None,
        "error_at": None,
        "next_attempt_at": None,
        "frames_read": 0,
        "frames_submitted": 0,
        "frames_skipped_motion": 0,
        "submit_errors": 0,
        "last_submit_error": None,
        "reconnects": 0,
        "connect_failures": 0,
        "last_frame_age_s": None,
        "last_submit_age_s": None,
        "max_submit_age_s": None,
        "submit_fps": 0.0,
        "last_motion_difference": None,
        "last_image_query": None,
    }
    assert round_trips(disabled) == {
        "name": "yard",
        "url": "/videos/yard.mp4",
        "kind": "file",
        "detector_id": DET,
        "enabled": False,
        "fps": 1.0,
        "state": "disabled",
        "connected": False,
        "error": None,
    }
    status = StreamsStatus.model_validate(
        {
            "uptime_s": 1.0,
            "submit_url": "http://gateway:30101",
            "config": {"source": "x", "fetched_at": 1.0, "applied_at": 1.0, "error": None},
            "streams": [data, round_trips(disabled)],
        }
    )
    assert [type(s).__name__ for s in status.streams] == ["StreamStatus", "DisabledStreamStatus"]
    round_trips(status)


# -- edge-api's /status -------------------------------------------------------------------------------


def peer_state(**answers: httpx.Response | Exception) -> Any:
    """The parts of edge-api's state that the peer parts of /status read, with scripted peers."""

    def client(name: str, url: str) -> httpx.AsyncClient:
        def answer(request: httpx.Request) -> httpx.Response:
            reply = answers[name]
            if isinstance(reply, Exception):
                raise reply
            return reply

        return httpx.AsyncClient(base_url=url, transport=httpx.MockTransport(answer))

    streams = [StreamConfig(name="door", url="rtsp://user:secret@cam/live", detector_id=DET)]
    return SimpleNamespace(
        settings=SimpleNamespace(streams_url=STREAMS_URL, updater_url=UPDATER_URL),
        peers=SimpleNamespace(streams=client("streams", STREAMS_URL), updater=client("updater", UPDATER_URL)),
        config=SimpleNamespace(config=SimpleNamespace(streams=streams)),
    )


async def test_edge_api_embeds_the_updater_s_status_parsed_into_its_model(updater: Updater):
    updater._loops = {DET: SimpleNamespace(state=troubled_state())}  # type: ignore[dict-item]
    peer = round_trips(updater.snapshot())
    report = await _updater_status(peer_state(updater=httpx.Response(200, json=peer)))
    assert isinstance(report, UpdaterReport)
    assert report.detectors[0].rejected == RejectedVersion(version="v2", reason="bad", at=10.5)
    assert round_trips(report) == {
        "service": {"url": UPDATER_URL, "reachable": True, "error": None},
        **peer,
    }


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (
            httpx.Response(200, content=b"not json"),
            "answered a status that does not parse (body: Invalid JSON",
        ),
        (
            httpx.Response(200, json={"uptime_s": 1.0}),
            "answered a status that does not parse (edge_id: Field",
        ),
        (httpx.Response(200, json=[1, 2]), "answered a status that does not parse (body: Input should be"),
        (httpx.Response(503, json={}), "updater answered 503"),
        (
            httpx.ConnectError("refused"),
            f"updater not running or not answering at {UPDATER_URL} (ConnectError)",
        ),
    ],
)
async def test_an_updater_whose_answer_does_not_parse_is_unreachable(
    reply: httpx.Response | Exception, error: str
):
    report = await _updater_status(peer_state(updater=reply))
    assert isinstance(report, UpdaterUnreachable)
    assert report.service.reachable is False and report.service.url == UPDATER_URL
    assert error in (report.service.error or ""), report.service.error
    assert list(round_trips(report)) == ["service"]


async def test_edge_api_embeds_the_streams_status_or_the_config_s_streams_with_the_reason():
    peer = {
        "uptime_s": 3.0,
        "submit_url": "http://gateway:30101",
        "config": {
            "source": "http://edge-api:8718/internal/edge-config",
            "fetched_at": 1.0,
            "applied_at": 1.0,
            "error": None,
        },
        "streams": [],
    }
    report = await _streams_status(peer_state(streams=httpx.Response(200, json=peer)))
    assert isinstance(report, StreamsReport)
    assert round_trips(report) == {"service": {"url": STREAMS_URL, "reachable": True, "error": None}, **peer}

    report = await _streams_status(peer_state(streams=httpx.Response(200, json={**peer, "streams": [{}]})))
    assert isinstance(report, StreamsUnreachable)
    error = report.service.error or ""
    assert error.startswith(f"streams service at {STREAMS_URL} answered a status that does not parse")
    data = round_trips(report)
    assert data == {
        "service": {"url": STREAMS_URL, "reachable": False, "error": error},
        "streams": [
            {
                "name": "door",
                "url": data["streams"][0]["url"],
                "detector_id": DET,
                "enabled": True,
                "fps": 1.0,
                "state": "unknown",
                "connected": None,
                "error": error,
            }
        ],
    }
    assert "secret" not in data["streams"][0]["url"]


def test_edge_status_parses_back_with_reachable_and_unreachable_peers():
    down = {"url": None, "reachable": False, "error": "not configured"}
    page = {
        "edge_id": "edge-1",
        "uptime_s": 1.0,
        "config_source": None,
        "inference": {"reachable": False, "error": "inference not answering"},
        "detectors": [
            {
                "detector_id": DET,
                "edge_inference_config": "default",
                "confidence_threshold": 0.9,
                "confidence_threshold_source": "default",
                "enabled": True,
                "model_version": None,
                "state": "unknown (inference unreachable)",
                "answers_with": None,
                "prior": {
                    "labels": ["YES", "NO"],
                    "counts": [3, 1],
                    "label": "YES",
                    "confidence": 0.7,
                    "confidence_threshold": 0.9,
                    "fetched_at": 1.0,
                    "age_s": 0.5,
                    "last_error": None,
                },
            }
        ],
        "outbox": {"pending": 0, "dead": 0, "oldest_pending_age_s": None, "alarm": False},
        "alerts": {
            "pending": 0,
            "dead": 0,
            "oldest_pending_age_s": None,
            "last_sent_at": None,
            "last_error": None,
            "last_error_at": None,
        },
        "cloud": {"url": "http://cloud", "reachable": None, "last_success_at": None, "last_error": None},
        "streams": {"service": down, "streams": []},
        "updater": {"service": down},
    }
    status = EdgeStatus.model_validate(page)
    assert isinstance(status.streams, StreamsUnreachable) and isinstance(status.updater, UpdaterUnreachable)
    assert round_trips(status) == page

    page["inference"] = {
        "reachable": True,
        "provider": "CPUExecutionProvider",
        "cache": {
            "entries": 0,
            "max_entries": 8,
            "bytes": 0,
            "max_bytes": 1,
            "in_use": 0,
            "backbones": 0,
            "backbone_bytes": 0,
        },
        "models": [],
    }
    status = EdgeStatus.model_validate(page)
    assert isinstance(status.inference, InferenceReport)
    assert round_trips(status) == page


def test_every_field_of_these_contracts_says_what_it_is():
    modules = (edge_status, hub_heartbeat, streams_status, updater_status)
    models = {
        model
        for module in modules
        for model in vars(module).values()
        if isinstance(model, type) and issubclass(model, BaseModel) and model.__module__ == module.__name__
    }
    undescribed = [
        f"{model.__name__}.{name}"
        for model in models
        for name, field in model.model_fields.items()
        if name in vars(model).get("__annotations__", {}) and not field.description  # its own fields
    ]
    assert undescribed == []
