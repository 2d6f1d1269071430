"""Bad input gets a clear 4xx with a JSON detail, is never forwarded to the cloud, and breaks nothing."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import httpx
import pytest
from PIL import Image

from tests.edge.conftest import DIGIT, UNKNOWN, edge_config
from tests.support.stack import ADMIN, DEVICE, EdgeStack

pytestmark = pytest.mark.processes

IQ_PATH = "/device-api/v1/image-queries"


def png_header_only(width: int, height: int) -> bytes:
    """A genuine PNG of the given size whose pixels compress to almost nothing."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (width + 1) * 8)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def gif() -> bytes:
    buf = io.BytesIO()
    Image.new("P", (16, 16)).save(buf, "GIF")
    return buf.getvalue()


def metadata(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode()


def metadata_text(text: bytes) -> str:
    return base64.urlsafe_b64encode(text).decode()


def deep(levels: int) -> dict[str, object]:
    value: dict[str, object] = {"v": 1}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


GOOD_PARAMS = {"detector_id": DIGIT}


def cases(jpeg: bytes) -> list[tuple[str, bytes, dict[str, str], int]]:
    return [
        ("empty body", b"", GOOD_PARAMS, 400),
        ("truncated jpeg", jpeg[: len(jpeg) // 2], GOOD_PARAMS, 400),
        ("gif", gif(), GOOD_PARAMS, 415),
        ("100 megapixel png", png_header_only(10_000, 10_000), GOOD_PARAMS, 413),
        (
            "100 megapixel png, unserved detector",
            png_header_only(10_000, 10_000),
            {"detector_id": UNKNOWN},
            413,
        ),
        ("json text", b'{"image": "not really"}', GOOD_PARAMS, 415),
        ("malformed detector id", jpeg, {"detector_id": "det_123"}, 400),
        ("detector id with ../", jpeg, {"detector_id": "det_../../../etc/passwd0000000"}, 400),
        ("missing detector id", jpeg, {}, 400),
        ("threshold not a number", jpeg, {**GOOD_PARAMS, "confidence_threshold": "high"}, 400),
        ("threshold out of range", jpeg, {**GOOD_PARAMS, "confidence_threshold": "1.5"}, 400),
        ("negative patience", jpeg, {**GOOD_PARAMS, "patience_time": "-1"}, 400),
        ("unknown human_review", jpeg, {**GOOD_PARAMS, "human_review": "SOMETIMES"}, 400),
        ("want_async not a bool", jpeg, {**GOOD_PARAMS, "want_async": "perhaps"}, 400),
        ("metadata over 1 KiB", jpeg, {**GOOD_PARAMS, "metadata": metadata({"k": "x" * 1100})}, 400),
        ("metadata not base64 json", jpeg, {**GOOD_PARAMS, "metadata": "%%%"}, 400),
        # What the cloud would refuse must be refused here, or its escalation dies in the outbox.
        ("metadata lone surrogate", jpeg, {**GOOD_PARAMS, "metadata": metadata({"a": "\ud800"})}, 400),
        ("metadata lone surrogate, plain JSON", jpeg, {**GOOD_PARAMS, "metadata": '{"a":"\\ud800"}'}, 400),
        ("metadata NUL in a value", jpeg, {**GOOD_PARAMS, "metadata": metadata({"a": "x\x00"})}, 400),
        ("metadata NUL in a key", jpeg, {**GOOD_PARAMS, "metadata": metadata({"\x00": 1})}, 400),
        ("metadata NaN", jpeg, {**GOOD_PARAMS, "metadata": metadata_text(b'{"x": NaN}')}, 400),
        ("metadata Infinity", jpeg, {**GOOD_PARAMS, "metadata": metadata_text(b'{"x": 1e999}')}, 400),
        ("metadata 40 deep", jpeg, {**GOOD_PARAMS, "metadata": metadata(deep(40))}, 400),
        ("metadata 9 deep", jpeg, {**GOOD_PARAMS, "metadata": metadata(deep(9))}, 400),
        (
            "metadata 40 deep, async",
            jpeg,
            {**GOOD_PARAMS, "metadata": metadata(deep(40)), "want_async": "true"},
            400,
        ),
        ("bad image_query_id", jpeg, {**GOOD_PARAMS, "image_query_id": "nope"}, 400),
        ("truncated jpeg, async", jpeg[: len(jpeg) // 2], {**GOOD_PARAMS, "want_async": "true"}, 400),
    ]


@pytest.fixture(scope="module")
def jpeg(digits) -> bytes:
    # A larger JPEG, so that cutting it in half really loses scan data.
    img = Image.open(io.BytesIO(digits[0][0])).resize((256, 256))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def test_each_bad_input_gets_a_4xx_json_detail_and_never_reaches_the_cloud(
    stack: EdgeStack, jpeg, digits
) -> None:
    stack.put_config(edge_config())
    before_requests = len(stack.cloud.state.requests)
    for name, body, params, status in cases(jpeg):
        resp = httpx.post(
            f"{stack.gateway_url}{IQ_PATH}",
            params=params,
            content=body,
            headers={"Content-Type": "image/jpeg", **DEVICE},
            timeout=15,
        )
        assert resp.status_code == status, f"{name}: {resp.status_code} {resp.text}"
        detail = resp.json()["detail"]
        assert isinstance(detail, str) and detail and "Traceback" not in detail, name
    assert len(stack.cloud.state.requests) == before_requests, "bad input was forwarded to the cloud"
    assert stack.outbox_rows() == []
    # The service keeps serving.
    ok = httpx.post(
        f"{stack.gateway_url}{IQ_PATH}", params=GOOD_PARAMS, content=digits[0][0], headers=DEVICE, timeout=15
    )
    assert ok.status_code == 200
    assert stack.edge is not None and stack.edge.is_running()


def test_metadata_within_every_limit_is_accepted(stack: EdgeStack, digits) -> None:
    stack.put_config(edge_config())
    for value in (deep(8), {"camera": "line-1", "emoji": "\U0001f600", "n": 1.5, "ok": None}):
        resp = httpx.post(
            f"{stack.gateway_url}{IQ_PATH}",
            params={**GOOD_PARAMS, "metadata": metadata(value)},
            content=digits[0][0],
            headers=DEVICE,
            timeout=15,
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["metadata"] == value


def test_invalid_edge_config_is_rejected_with_the_path_of_the_bad_field(stack: EdgeStack) -> None:
    bad = {"detectors": [{"detector_id": DIGIT, "confidence_threshold": 7}]}
    resp = httpx.put(f"{stack.gateway_url}/edge-config", json=bad, headers=ADMIN, timeout=10)
    assert resp.status_code == 400 and "detectors.0.confidence_threshold" in resp.json()["detail"]
    current = httpx.get(f"{stack.gateway_url}/edge-config", headers=ADMIN, timeout=10).json()
    assert any(d["detector_id"] == DIGIT for d in current["detectors"])
