"""Properties of the edge under generated traffic, device and operator alike:

1. Whatever a client sends to any documented operation, the edge never answers with a 5xx.
2. Nothing is lost: every image query the edge answered with a 2xx can be read back from it, and every
   escalation it queued reaches the cloud exactly once.

Schemathesis generates the requests from edge-api's own OpenAPI document, first with a device token,
then with the operator's token (the documented examples, boundary values for the operator, then a
bounded number of random ones per operation), and checks only `not_a_server_error`. Requests go
through the gateway, the door cameras use: edge-api's 503 for a detector it does not answer means
"ask the cloud", which the gateway does (tests.support.fake_cloud answers), while a 500 of edge-api
reaches the client untouched. The reads of property 2 go to edge-api itself, so that a lost record
cannot hide behind the gateway's fallback.

The submit route reads its raw body and query string itself, so FastAPI cannot describe them; the
document is completed here with the SDK's query parameters, X-Request-Id, and the edge config body of
`PUT /edge-config`. Bodies of `image/jpeg` come from a strategy of real images (handwritten digits
the demo models know, photos they must escalate), damaged copies of them, and random bytes; this
module registers it when schemathesis loads it as its hooks module (`SCHEMATHESIS_HOOKS`). Like
tests/cloud/test_schemathesis.py it runs schemathesis as its own process; a failure lists each
operation and a curl command that reproduces it.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.edge_config import PRESETS, STREAM_NAME_RE, EdgeConfig
from tests.edge.conftest import DIGIT, SEVEN, UNKNOWN, edge_config, wait_until
from tests.support.cloud import DEVICE_TOKEN
from tests.support.fake_cloud import FakeCloud
from tests.support.stack import ADMIN, ADMIN_TOKEN, DEVICE, ROOT, EdgeStack

pytestmark = pytest.mark.slow

# Random requests per operation, after the examples (and, for the operator, the boundary values):
# enough to reach the decision tree with every kind of body, few enough that all passes stay well
# under a minute on two busy cores. The operator passes every access check, so its passes reach every
# operation's logic and get the boundary values; the device pass checks the same properties through
# the device's access.
EXAMPLES_PER_OPERATION = 20
# (name, token, phases, operations). A generated edge config that the edge accepts replaces the
# stack's, after which the demo detectors may no longer be served (the gateway asks the cloud for
# them): so PUT /edge-config has the operator's last pass to itself, after everything that needs the
# demo detectors served. The device is refused it (403) like every operator route, in its own pass.
# GET /internal/edge-config and /internal/facts are in every pass too; the gateway answers them itself
# (404).
PASSES = (
    ("device", DEVICE_TOKEN, "examples,fuzzing", ()),
    ("operator", ADMIN_TOKEN, "examples,coverage,fuzzing", ("--exclude-operation-id", "put_edge_config")),
    (
        "operator-edge-config",
        ADMIN_TOKEN,
        "examples,coverage,fuzzing",
        ("--include-operation-id", "put_edge_config"),
    ),
)
SEED = 20240601
SUBMIT_PATH = "/device-api/v1/image-queries"


# --- the OpenAPI document, completed -------------------------------------------------------------


def _one_of(*values: str) -> dict[str, Any]:
    """A valid request names one of `values`; the negative cases send anything else."""
    return {"type": "string", "enum": list(values)}


def _query(name: str, schema: dict[str, Any], *, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema}


# What `POST /device-api/v1/image-queries` reads from the query string (common.params), as the SDK
# sends it, and the idempotency header. A valid request names a configured detector with a model
# (DIGIT, SEVEN) or one this edge does not serve (UNKNOWN: the gateway asks the cloud).
SUBMIT_PARAMETERS = [
    _query("detector_id", _one_of(DIGIT, SEVEN, UNKNOWN), required=True),
    _query("want_async", {"type": "boolean"}),
    _query("human_review", _one_of("DEFAULT", "ALWAYS", "NEVER")),
    _query("confidence_threshold", {"type": "number", "minimum": 0, "maximum": 1}),
    _query("patience_time", {"type": "number", "exclusiveMinimum": 0, "maximum": 3600}),
    _query("inspection_id", {"type": "string", "maxLength": 100}),
    _query("metadata", _one_of('{"camera": "dock-1"}', "eyJjYW1lcmEiOiAiZG9jay0xIn0")),
    _query("image_query_id", {"type": "string", "pattern": "^iq_[A-Za-z0-9_-]{1,100}$"}),
    {"name": "X-Request-Id", "in": "header", "required": False, "schema": {"type": "string"}},
]


# A camera the streams service can read: scheme, maybe a user and password (or the redacted `***`),
# a host, maybe a port, a path.
CAMERA_URL = (
    r"^(rtsp|rtsps|http|https)://"
    r"([a-z]{1,8}(:[a-z*]{1,8})?@)?"
    r"[a-z0-9.-]{1,16}(:[0-9]{1,6})?"
    r"(/[A-Za-z0-9_.-]{0,16})?$"
)

# A camera with its password, the same as `GET /edge-config` shows it (redacted), and with a port one
# past the last.
CAMERA_EXAMPLES = [
    "rtsp://viewer:secret@cam-dock-1:554/live",
    "rtsp://viewer:***@cam-dock-1:554/live",
    "rtsp://viewer:secret@cam-dock-1:65536/live",
]


def completed_schema(document: dict[str, Any]) -> dict[str, Any]:
    """edge-api's document with what its raw-body routes read but cannot declare."""
    doc = copy.deepcopy(document)
    submit = doc["paths"][SUBMIT_PATH]["post"]
    submit["parameters"] = [*submit.get("parameters", []), *SUBMIT_PARAMETERS]

    config_schema = EdgeConfig.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions: dict[str, Any] = config_schema.pop("$defs")
    detector = definitions["DetectorConfig"]["properties"]
    detector["detector_id"] = _one_of(DIGIT, SEVEN, UNKNOWN)
    detector["edge_inference_config"] = _one_of(*PRESETS)
    # What the validators check and the generated schema cannot say, so that valid configs, cameras
    # with passwords among them, get through to what the edge does with one (apply, keep, redact):
    # a stream names a detector of the same config, here always DIGIT.
    stream = definitions["StreamConfig"]["properties"]
    stream["name"] = {"type": "string", "pattern": STREAM_NAME_RE.pattern}
    stream["detector_id"] = _one_of(DIGIT)
    stream["url"] = {"type": "string", "pattern": CAMERA_URL, "examples": CAMERA_EXAMPLES}
    detectors = config_schema["properties"]["detectors"]
    detectors["contains"] = {
        "type": "object",
        "properties": {"detector_id": _one_of(DIGIT)},
        "required": ["detector_id"],
    }
    config_schema["required"] = ["detectors"]
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    clashes = set(schemas) & {*definitions, "EdgeConfig"}
    assert not clashes, f"edge config schemas clash with edge-api's own: {sorted(clashes)}"
    schemas.update(definitions)
    schemas["EdgeConfig"] = config_schema
    doc["paths"]["/edge-config"]["put"]["requestBody"] = {
        "required": False,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/EdgeConfig"}}},
    }
    return doc


# --- the image bodies (loaded by schemathesis, in its own process) -------------------------------


def _register_image_bodies() -> None:
    import schemathesis
    from hypothesis import strategies as st

    from training.sample_images import demo_digit_images, out_of_domain_images

    images = [
        *(image for image, _ in demo_digit_images(6, seed=7)),
        *(image for image, _ in demo_digit_images(2, "PNG", seed=8)),
        *out_of_domain_images(2, seed=9),
    ]

    def truncated(image: bytes, keep: float) -> bytes:
        return image[: int(len(image) * keep)]

    def damaged(image: bytes, at: float, junk: bytes) -> bytes:
        start = int(len(image) * at)
        return image[:start] + junk + image[start + len(junk) :]

    fraction = st.floats(min_value=0.0, max_value=1.0)
    schemathesis.openapi.media_type(
        "image/jpeg",
        st.one_of(
            st.sampled_from(images),
            st.builds(truncated, st.sampled_from(images), fraction),
            st.builds(damaged, st.sampled_from(images), fraction, st.binary(min_size=1, max_size=32)),
            st.binary(max_size=512),
        ),
    )


if os.environ.get("SCHEMATHESIS_HOOKS") == __name__:
    _register_image_bodies()


# --- the runs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    name: str
    returncode: int
    stdout: str
    stderr: str
    har: Path


@pytest.fixture(scope="module")
def runs(stack: EdgeStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    workdir = tmp_path_factory.mktemp("schemathesis")
    # edge-api serves its document to anyone; the operator's token would do if it ever asked for one.
    resp = httpx.get(f"{stack.edge_url}/openapi.json", headers=ADMIN, timeout=10)
    assert resp.status_code == 200, resp.text
    schema_file = workdir / "edge-openapi.json"
    schema_file.write_text(json.dumps(completed_schema(resp.json())))
    done: dict[str, Run] = {}
    for name, token, phases, operations in PASSES:
        done[name] = _schemathesis(stack, schema_file, token, phases, operations, workdir / name)
    return done


def _schemathesis(
    stack: EdgeStack,
    schema_file: Path,
    token: str,
    phases: str,
    operations: tuple[str, ...],
    workdir: Path,
) -> Run:
    workdir.mkdir()
    har = workdir / "requests.har"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        str(schema_file),
        "--url",
        stack.gateway_url,
        "--checks",
        "not_a_server_error",
        "--header",
        f"x-api-token: {token}",
        "--phases",
        phases,
        *operations,
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        str(SEED),
        "--generation-database",
        "none",
        # One worker: Hypothesis parses lambda sources with `ast`, which is not thread-safe on 3.11.
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--warnings",
        "off",
        "--output-truncate",
        "true",
        "--report",
        "har",
        "--report-har-path",
        str(har),
        "--report-dir",
        str(workdir),
    ]
    env = {
        **os.environ,
        "NO_COLOR": "1",
        "SCHEMATHESIS_HOOKS": __name__,
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    result = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=240, env=env, check=False
    )
    return Run(workdir.name, result.returncode, result.stdout, result.stderr, har)


def _report(stdout: str) -> str:
    """The failures and the summary, without the progress lines before them."""
    start = stdout.find("= FAILURES =")
    return stdout[max(0, start - 40) :] if start >= 0 else stdout[-20000:]


# --- property 1 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [name for name, _, _, _ in PASSES])
def test_no_request_makes_the_edge_answer_with_a_5xx(runs: dict[str, Run], name: str) -> None:
    run = runs[name]
    assert run.returncode == 0, (
        f"server errors in the {name} pass:\n{_report(run.stdout)}{run.stderr[-4000:]}"
    )


# --- property 2 ----------------------------------------------------------------------------------


def edge_answers(har: Path) -> dict[str, dict[str, Any]]:
    """image query id -> the query, for every submit the edge itself answered with a 2xx (answers the
    gateway got from the cloud carry the fake cloud's `served_by`)."""
    answered: dict[str, dict[str, Any]] = {}
    for entry in json.loads(har.read_text())["log"]["entries"]:
        request, response = entry["request"], entry["response"]
        path = httpx.URL(request["url"]).path
        if request["method"] != "POST" or path != SUBMIT_PATH or not 200 <= response["status"] < 300:
            continue
        content = response["content"]
        text = content.get("text", "")
        raw = base64.b64decode(text) if content.get("encoding") == "base64" else text.encode()
        body = json.loads(raw)
        if body.get("served_by") == "cloud":
            continue
        assert isinstance(body.get("id"), str), f"a 2xx answer without an id: {body}"
        answered[body["id"]] = body
    return answered


def escalated_records(stack: EdgeStack) -> set[str]:
    """Ids of the queries the edge recorded as escalated: each was queued in the same transaction."""
    with sqlite3.connect(f"file:{stack.data_dir / 'edge.sqlite3'}?mode=ro", uri=True) as conn:
        rows = conn.execute("SELECT id, body FROM image_queries").fetchall()
    return {
        str(iq_id) for iq_id, body in rows if (json.loads(body).get("intellioptics") or {}).get("escalated")
    }


def test_nothing_the_edge_answered_is_lost(stack: EdgeStack, runs: dict[str, Run]) -> None:
    # The operator's passes may have applied any valid edge config; the stack's own comes back, without
    # the cameras a generated one added (a config without `streams` would keep them).
    stack.put_config({**edge_config(), "streams": []})
    answered: dict[str, dict[str, Any]] = {}
    for run in runs.values():
        answered.update(edge_answers(run.har))
    assert answered, "no generated submit was answered by the edge: the runs never reached the model"

    with httpx.Client(base_url=stack.edge_url, headers=DEVICE, timeout=10) as edge:
        for iq_id in sorted(answered):
            resp = edge.get(f"{SUBMIT_PATH}/{iq_id}")
            assert resp.status_code == 200, f"{iq_id}: {resp.status_code} {resp.text}"
            assert resp.json()["id"] == iq_id

    escalated = escalated_records(stack)
    said_escalated = {i for i, iq in answered.items() if (iq.get("intellioptics") or {}).get("escalated")}
    assert said_escalated <= escalated
    assert escalated, "no generated submit was escalated: the runs never reached the outbox"

    # Delivered entries leave the outbox; one the cloud refused would stay there, dead.
    try:
        wait_until(lambda: not stack.outbox_rows(), timeout=30, what="the outbox to drain")
    except AssertionError:
        raise AssertionError(f"still in the outbox: {stack.outbox_rows()}") from None
    assert isinstance(stack.cloud, FakeCloud)
    cloud = stack.cloud.state
    with cloud.lock:
        received = set(cloud.escalations)
        posts = dict(cloud.posts_per_id)
    assert received == escalated, (
        f"queued, not received: {sorted(escalated - received)}; "
        f"received, never queued: {sorted(received - escalated)}"
    )
    assert {i: n for i, n in posts.items() if n != 1} == {}, "escalations posted more than once"
