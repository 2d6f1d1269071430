"""The unmodified Groundlight SDK (PyPI, 1.3.x) against the edge, through the nginx gateway: over HTTP,
and over HTTPS with the gateway's self-signed certificate, unverified (`disable_tls_verification`) and
trusted (its certificate as the CA bundle: SSL_CERT_FILE for the generated client's urllib3,
REQUESTS_CA_BUNDLE for the calls the SDK makes with requests)."""

from __future__ import annotations

import io
import secrets
from pathlib import Path

import httpx
import numpy as np
import pytest
import requests
from groundlight import ApiTokenError, ExperimentalApi, Groundlight
from groundlight.images import parse_supported_image_types
from PIL import Image

from common.ids import new_detector_id
from tests.edge.conftest import DIGIT, SEVEN, edge_config
from tests.support.cloud import DEVICE_TOKEN
from tests.support.fake_cloud import FakeCloud
from tests.support.stack import ADMIN, ADMIN_TOKEN, INTERNAL, EdgeStack

pytestmark = pytest.mark.processes

TOKEN = DEVICE_TOKEN
WRONG_TOKEN = "io_notatokenanybodyknows_" + "z" * 20
TRANSPORTS = ["http", "https-unverified", "https-trusted"]


@pytest.fixture(autouse=True)
def _token_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROUNDLIGHT_TOKEN_DIR", str(tmp_path / "tokens"))


def client_kwargs(stack: EdgeStack, transport: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Constructor arguments (and CA environment) for one way of reaching the gateway."""
    if transport == "http":
        return {"endpoint": stack.gateway_url}
    if transport == "https-unverified":
        return {"endpoint": stack.gateway_tls_url, "disable_tls_verification": True}
    monkeypatch.setenv("SSL_CERT_FILE", str(stack.gateway_cert))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(stack.gateway_cert))
    return {"endpoint": stack.gateway_tls_url}


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def gl(stack: EdgeStack, transport: str, monkeypatch: pytest.MonkeyPatch) -> Groundlight:
    stack.put_config(edge_config())
    return Groundlight(api_token=TOKEN, **client_kwargs(stack, transport, monkeypatch))  # type: ignore[arg-type]


def expected(stack: EdgeStack, image: object, detector: str = DIGIT) -> tuple[str, float]:
    """Label and confidence the inference service computes for the bytes the SDK actually sends."""
    data = parse_supported_image_types(image).read()
    resp = httpx.post(
        f"{stack.inference_url}/infer",
        params={"detector_id": detector},
        content=data,
        headers=INTERNAL,
        timeout=15,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    return body["label"], round(body["confidence"], 6)


def label_of(iq: object) -> str:
    """The SDK parses binary labels into an enum and class names into plain strings."""
    label = iq.result.label  # type: ignore[attr-defined]
    return str(label.value if hasattr(label, "value") else label)


def check(stack: EdgeStack, gl: Groundlight, iq: object, image: object, detector: str = DIGIT) -> None:
    label, confidence = expected(stack, image, detector)
    assert label_of(iq) == label
    fetched = gl.get_image_query(iq.id)  # type: ignore[attr-defined]
    assert label_of(fetched) == label
    assert fetched.result.confidence == pytest.approx(confidence, abs=1e-6)
    assert fetched.result.from_edge is True


def test_constructor_handshake_and_whoami_work_on_the_edge(stack: EdgeStack, gl: Groundlight) -> None:
    """whoami names the account the cloud vouched for when the edge checked the token."""
    assert gl.whoami() == "device@fake.cloud"


def test_a_wrong_token_fails_the_constructor_with_api_token_error(
    stack: EdgeStack, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ApiTokenError):
        Groundlight(api_token=WRONG_TOKEN, **client_kwargs(stack, transport, monkeypatch))  # type: ignore[arg-type]


def test_an_untrusted_certificate_is_refused_when_verification_is_on(
    stack: EdgeStack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the gateway's certificate in the CA bundle the SDK refuses the connection."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    with pytest.raises(ApiTokenError):
        Groundlight(endpoint=stack.gateway_tls_url, api_token=TOKEN)
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


def test_submit_jpeg_file_png_bytes_numpy_and_pil(
    stack: EdgeStack, gl: Groundlight, digits, tmp_path
) -> None:
    jpeg, _ = digits[0]
    path = tmp_path / "digit.jpg"
    path.write_bytes(jpeg)
    pil = Image.open(io.BytesIO(digits[1][0])).convert("RGB")
    png = io.BytesIO()
    Image.open(io.BytesIO(digits[2][0])).save(png, "PNG")
    bgr = np.asarray(Image.open(io.BytesIO(digits[3][0])).convert("RGB"))[:, :, ::-1].copy()
    for image in (str(path), png.getvalue(), bgr, pil):
        iq = gl.submit_image_query(detector=DIGIT, image=image, wait=5)
        check(stack, gl, iq, image)


def test_ask_ml_threshold_metadata_and_client_chosen_id(stack: EdgeStack, gl: Groundlight, digits) -> None:
    image = digits[4][0]
    iq = gl.ask_ml(detector=DIGIT, image=image)
    check(stack, gl, iq, image)

    iq_id = "iq_sdk" + secrets.token_hex(8)
    iq = gl.submit_image_query(
        detector=DIGIT,
        image=image,
        wait=5,
        confidence_threshold=0.8,
        metadata={"camera": "line-3", "n": 7},
        image_query_id=iq_id,
    )
    assert iq.id == iq_id and iq.confidence_threshold == 0.8
    assert iq.metadata == {"camera": "line-3", "n": 7}
    fetched = gl.get_image_query(iq_id)
    assert fetched.metadata == {"camera": "line-3", "n": 7} and fetched.id == iq_id


def test_binary_detector_and_get_detector(stack: EdgeStack, gl: Groundlight, digits) -> None:
    det = gl.get_detector(SEVEN)
    assert det.id == SEVEN and det.query == "Is this digit a 7?"
    image = digits[5][0]
    iq = gl.submit_image_query(detector=det, image=image, wait=5)
    label, _ = expected(stack, image, SEVEN)
    assert label_of(iq) == label and label in ("YES", "NO")


def test_edge_helpers_read_and_apply_config(stack: EdgeStack, digits) -> None:
    """The edge config is the operator's: the SDK's edge config calls work with the edge admin token."""
    from groundlight.edge import EdgeEndpointConfig

    api = ExperimentalApi(endpoint=stack.gateway_url, api_token=ADMIN_TOKEN)
    assert api.edge.get_upstream_endpoint() == stack.cloud.url
    config = api.edge.get_config()
    assert {d.detector_id for d in config.detectors} >= {DIGIT, SEVEN}
    readiness = api.edge.get_detector_readiness()
    assert readiness[DIGIT] is True and readiness[SEVEN] is True
    new = EdgeEndpointConfig.model_validate(edge_config(audit_rate=0.25))
    api.edge.set_config(new, timeout_sec=30)
    got = httpx.get(f"{stack.gateway_url}/edge-config", headers=ADMIN, timeout=10).json()
    assert got["global_config"]["confident_audit_rate"] == 0.25
    stack.put_config(edge_config())


def test_a_device_token_may_not_read_or_change_the_edge_config(stack: EdgeStack) -> None:
    from groundlight.edge import EdgeEndpointConfig

    api = ExperimentalApi(endpoint=stack.gateway_url, api_token=TOKEN)
    assert api.edge.get_detector_readiness()[DIGIT] is True
    for call in (
        api.edge.get_config,
        lambda: api.edge.apply_config(EdgeEndpointConfig.model_validate(edge_config(audit_rate=0.5))),
    ):
        with pytest.raises(requests.HTTPError) as raised:
            call()
        assert raised.value.response.status_code == 403
    got = httpx.get(f"{stack.gateway_url}/edge-config", headers=ADMIN, timeout=10).json()
    assert got["global_config"]["confident_audit_rate"] != 0.5


def test_a_brand_new_detector_is_ready_after_set_config_and_ask_ml_answers_with_its_prior(
    stack: EdgeStack, digits
) -> None:
    from groundlight.edge import EdgeEndpointConfig

    assert isinstance(stack.cloud, FakeCloud)
    detector = new_detector_id()  # no model anywhere, no label yet
    stack.cloud.set_prior(detector, ["YES", "NO"], [0, 0], query="Is the bin full?")
    api = ExperimentalApi(endpoint=stack.gateway_url, api_token=ADMIN_TOKEN)

    # Waits for readiness: EdgeDetectorsNotReadyError if the edge never said the detector is ready.
    api.edge.set_config(EdgeEndpointConfig.model_validate(edge_config(**{detector: "fast"})), timeout_sec=30)
    assert api.edge.get_detector_readiness()[detector] is True

    iq = api.ask_ml(detector=detector, image=digits[9][0])
    source = iq.result.source
    assert str(getattr(source, "value", source)) == "ALGORITHM"
    assert label_of(iq) == "YES" and iq.result.confidence == pytest.approx(0.5)
    assert iq.result.from_edge is True and iq.query == "Is the bin full?"
    assert iq.id.startswith("iq_")
    fetched = api.get_image_query(iq.id)
    assert label_of(fetched) == "YES"
    stack.put_config(edge_config())
