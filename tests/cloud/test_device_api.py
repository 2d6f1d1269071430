"""The cloud's Groundlight-compatible device API over HTTP: detectors, image queries, labels, account.

Each test makes its own detectors (names are unique across the session's database), so the tests
do not depend on one another's data.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import secrets
import sqlite3
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import pytest
from PIL import Image

from tests.support.cloud import DEVICE_TOKEN, CloudServer, use_sqlite
from tests.support.cloud_factories_registry import run_in_db, token_for

pytestmark = pytest.mark.in_process

if TYPE_CHECKING:
    from tests.support.cloud import TestDatabase

DET_PATH = "/device-api/v1/detectors"
IQ_PATH = "/device-api/v1/image-queries"
LABEL_PATH = "/device-api/v1/labels"


def db_scalar(db: TestDatabase, sql: str, *args: Any) -> Any:
    """One value from the test database, written with `?` placeholders for either engine."""
    if use_sqlite():
        with sqlite3.connect(db.workdir / "cloud.db") as conn:
            return conn.execute(sql, args).fetchone()[0]
    for i in range(len(args)):
        sql = sql.replace("?", f"${i + 1}", 1)

    async def fetch() -> Any:
        conn = await asyncpg.connect(db.url)
        try:
            return await conn.fetchval(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(fetch())


def unique(prefix: str = "det") -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def make_detector(http: httpx.Client, **body: Any) -> dict[str, Any]:
    body = {"name": unique(), "query": "Is this a seven?", "pipeline_config": None, **body}
    resp = http.post(DET_PATH, json=body)
    assert resp.status_code == 201, resp.text
    detector: dict[str, Any] = resp.json()
    return detector


def submit(http: httpx.Client, detector_id: str, image: bytes, **params: Any) -> httpx.Response:
    headers = {"Content-Type": "image/jpeg"}
    if "request_id" in params:
        headers["X-Request-Id"] = params.pop("request_id")
    return http.post(IQ_PATH, params={"detector_id": detector_id, **params}, content=image, headers=headers)


def b64json(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode()


def nested(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"v": 1}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def gif() -> bytes:
    buf = io.BytesIO()
    Image.new("P", (16, 16)).save(buf, "GIF")
    return buf.getvalue()


def png(size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def http(cloud: CloudServer) -> Iterator[httpx.Client]:
    with cloud.client() as client:
        yield client


@pytest.fixture(scope="module")
def admin(cloud: CloudServer) -> Iterator[httpx.Client]:
    """A script with an admin's token: detector updates and deletions are an admin's."""
    with cloud.client(run_in_db(cloud.database_url, lambda s: token_for(s, "admin"))) as client:
        yield client


@pytest.fixture
def jpeg(digits: list[tuple[bytes, int]]) -> bytes:
    return digits[0][0]


# --- account and authentication ---------------------------------------------------------------


def test_token_probe_answers_404_for_a_valid_token_and_401_for_a_bad_one(cloud: CloudServer) -> None:
    snippet = DEVICE_TOKEN[:20]
    with cloud.client() as good, cloud.client(token="io_" + "z" * 40) as bad:
        resp = good.get(f"/device-api/v1/api-tokens/by-snippet/{snippet}")
        assert resp.status_code == 404 and resp.json()["detail"]
        assert bad.get(f"/device-api/v1/api-tokens/by-snippet/{snippet}").status_code == 401


def test_me_describes_the_calling_user(http: httpx.Client) -> None:
    me = http.get("/device-api/v1/me").json()
    assert me["username"] == "device" and "@" in me["email"]
    assert isinstance(me["group"]["id"], int) and me["group"]["name"]
    assert me["is_superuser"] is False


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/device-api/v1/me"),
        ("GET", DET_PATH),
        ("POST", DET_PATH),
        ("GET", IQ_PATH),
        ("POST", IQ_PATH),
        ("GET", f"{IQ_PATH}/iq_x/image"),
        ("POST", LABEL_PATH),
        ("GET", "/device-api/v1/month-to-date-account-info"),
    ],
)
def test_every_device_route_refuses_a_missing_or_wrong_token(
    cloud: CloudServer, method: str, path: str
) -> None:
    for token in (None, "io_" + "q" * 40):
        with cloud.client(token=token) as client:
            resp = client.request(method, path)
            assert resp.status_code == 401, (token, resp.text)
            assert resp.json()["detail"]


def test_month_to_date_usage_counts_queries(http: httpx.Client, jpeg: bytes) -> None:
    before = http.get("/device-api/v1/month-to-date-account-info").json()
    det = make_detector(http)
    assert submit(http, det["id"], jpeg).status_code == 200
    after = http.get("/device-api/v1/month-to-date-account-info").json()
    assert after["iqs"] == before["iqs"] + 1
    assert after["active_detectors"] == before["active_detectors"] + 1
    assert after["iqs_limit"] is None and isinstance(after["escalations"], int)


# --- detectors --------------------------------------------------------------------------------


def test_binary_detector_gets_the_documented_defaults(http: httpx.Client, cloud_db: TestDatabase) -> None:
    det = make_detector(http, group_name=None)
    assert det["id"].startswith("det_") and len(det["id"]) == 31
    assert det["type"] == "detector" and det["mode"] == "BINARY" and det["mode_configuration"] is None
    assert det["confidence_threshold"] == 0.9 and det["patience_time"] == 30.0
    assert det["group_name"] == "" and det["created_at"].endswith("Z")
    assert json.loads(db_scalar(cloud_db, "SELECT labels FROM detectors WHERE id = ?", det["id"])) == [
        "YES",
        "NO",
    ]
    assert http.get(f"{DET_PATH}/{det['id']}").json() == det


def test_multiclass_and_count_detectors_keep_their_labels(http: httpx.Client, cloud_db: TestDatabase) -> None:
    multi = make_detector(
        http,
        mode="MULTI_CLASS",
        mode_configuration={"class_names": ["red", "green", "blue"]},
        confidence_threshold=0.7,
    )
    assert multi["mode_configuration"] == {"class_names": ["red", "green", "blue"], "num_classes": 3}
    assert multi["confidence_threshold"] == 0.7
    count = make_detector(http, mode="COUNT", mode_configuration={"class_name": "widget", "max_count": 3})
    assert count["mode_configuration"] == {"max_count": 3, "class_name": "widget"}
    default_count = make_detector(http, mode="COUNT", mode_configuration={"class_name": "bolt"})
    assert default_count["mode_configuration"]["max_count"] == 10

    def labels(det: dict[str, Any]) -> list[str]:
        return list(json.loads(db_scalar(cloud_db, "SELECT labels FROM detectors WHERE id = ?", det["id"])))

    assert labels(multi) == ["red", "green", "blue"]
    assert labels(count) == ["0", "1", "2", "3"]
    assert labels(default_count) == [str(i) for i in range(11)]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": "x"},
        {"name": "", "query": "q"},
        {"name": "x" * 201, "query": "q"},
        {"name": "n", "query": "q", "confidence_threshold": 1.5},
        {"name": "n", "query": "q", "patience_time": -1},
        {"name": "n", "query": "q", "mode": "TEXT"},
        {"name": "n", "query": "q", "mode": "MULTI_CLASS"},
        {"name": "n", "query": "q", "mode": "MULTI_CLASS", "mode_configuration": {"class_names": ["only"]}},
        {"name": "n", "query": "q", "mode": "MULTI_CLASS", "mode_configuration": {"class_names": ["a", "a"]}},
        {"name": "n", "query": "q", "mode": "COUNT", "mode_configuration": {}},
        {
            "name": "n",
            "query": "q",
            "mode": "COUNT",
            "mode_configuration": {"class_name": "c", "max_count": 0},
        },
        {"name": "n", "query": "q", "metadata": "!!not base64!!"},
        {"name": "bad\u0000name", "query": "q"},
        {"name": "   ", "query": "q"},
        {"name": "\t\n", "query": "q"},
        {"name": "n", "query": "q", "metadata": {"a": "x\u0000"}},
        {"name": "n", "query": "q", "metadata": {"k": "x" * 1100}},
    ],
)
def test_malformed_detector_bodies_are_refused_with_400(http: httpx.Client, body: dict[str, Any]) -> None:
    resp = http.post(DET_PATH, json=body)
    assert resp.status_code == 400, resp.text
    assert resp.json()["detail"]


def test_detector_names_are_stored_trimmed_and_found_by_either_form(http: httpx.Client) -> None:
    name = unique("trimmed")
    det = make_detector(http, name=f"  {name} ")
    assert det["name"] == name
    for asked in (name, f"%20{name}%20%20"):  # the SDK sends a space as %20
        found = http.get(f"{DET_PATH}?name={asked}").json()
        assert found["count"] == 1 and found["results"][0]["id"] == det["id"], asked
    # The same name with other spaces around it is the same name: taken.
    assert http.post(DET_PATH, json={"name": f"{name}\t", "query": "q"}).status_code == 409


def test_detector_metadata_is_decoded_from_the_sdks_base64(http: httpx.Client) -> None:
    det = make_detector(http, metadata=b64json({"line": 3}))
    assert det["metadata"] == {"line": 3}


def test_a_taken_name_answers_409_even_when_two_creates_race(http: httpx.Client) -> None:
    name = unique()
    body = {"name": name, "query": "Is it open?"}
    with ThreadPoolExecutor(6) as pool:
        statuses = sorted(pool.map(lambda _: http.post(DET_PATH, json=body).status_code, range(6)))
    assert statuses == [201, 409, 409, 409, 409, 409]
    assert http.post(DET_PATH, json=body).json()["detail"]


def test_unknown_detector_is_404_and_delete_removes_one(
    http: httpx.Client, admin: httpx.Client, jpeg: bytes
) -> None:
    assert http.get(f"{DET_PATH}/det_{'A' * 27}").status_code == 404
    assert http.get(f"{DET_PATH}/not-an-id").status_code == 404
    det = make_detector(http)
    iq = submit(http, det["id"], jpeg).json()
    assert http.delete(f"{DET_PATH}/{det['id']}").status_code == 403
    assert admin.delete(f"{DET_PATH}/{det['id']}").status_code == 204
    assert http.get(f"{DET_PATH}/{det['id']}").status_code == 404
    assert http.get(f"{IQ_PATH}/{iq['id']}").status_code == 404
    assert admin.delete(f"{DET_PATH}/{det['id']}").status_code == 404


def test_detector_threshold_and_status_can_be_updated(http: httpx.Client, admin: httpx.Client) -> None:
    det = make_detector(http)
    assert http.patch(f"{DET_PATH}/{det['id']}", json={"confidence_threshold": 0.75}).status_code == 403
    updated = admin.patch(f"{DET_PATH}/{det['id']}", json={"confidence_threshold": 0.75}).json()
    assert updated["confidence_threshold"] == 0.75
    assert admin.patch(f"{DET_PATH}/{det['id']}", json={"status": "OFF"}).json()["status"] == "OFF"
    assert admin.patch(f"{DET_PATH}/{det['id']}", json={"confidence_threshold": 2}).status_code == 400


def test_detector_list_pages_with_absolute_links(http: httpx.Client, cloud: CloudServer) -> None:
    made = {make_detector(http)["id"] for _ in range(3)}
    first = http.get(DET_PATH, params={"page": 1, "page_size": 2}).json()
    assert first["count"] >= 3 and len(first["results"]) == 2 and first["previous"] is None
    assert first["next"].startswith(f"{cloud.url}{DET_PATH}?")
    seen: list[str] = []
    url: str | None = f"{cloud.url}{DET_PATH}?page=1&page_size=2"
    pages = 0
    while url is not None:
        page = http.get(url).json()
        seen.extend(d["id"] for d in page["results"])
        if pages:
            assert page["previous"].startswith(cloud.url)
        url = page["next"]
        pages += 1
    assert len(seen) == len(set(seen)) == first["count"]
    assert made <= set(seen)
    assert http.get(DET_PATH, params={"page": 0}).status_code == 400
    assert http.get(DET_PATH, params={"page_size": "ten"}).status_code == 400


def test_get_by_name_keeps_a_plus_and_decodes_percent_escapes(http: httpx.Client) -> None:
    name = f"a+b c-{secrets.token_hex(3)}"
    det = make_detector(http, name=name)
    # The SDK sends the name unencoded: `+` arrives as `+`, a space as `%20`.
    raw = name.replace(" ", "%20")
    found = http.get(f"{DET_PATH}?name={raw}").json()
    assert found["count"] == 1 and found["results"][0]["id"] == det["id"]
    assert http.get(DET_PATH, params={"name": unique("missing")}).json()["count"] == 0


# --- image queries ----------------------------------------------------------------------------


def test_query_without_a_model_gets_the_label_prior_and_waits_for_a_person(
    http: httpx.Client, cloud_db: TestDatabase, jpeg: bytes
) -> None:
    det = make_detector(http, patience_time=12.0)
    resp = submit(http, det["id"], jpeg, metadata=b64json({"camera": "line-3"}))
    assert resp.status_code == 200, resp.text
    iq = resp.json()
    assert iq["id"].startswith("iq_") and iq["type"] == "image_query"
    # No label yet: every answer has 1/K, the first in key order (YES) answers.
    assert iq["result"] == {
        "result_type": "binary_classification",
        "confidence": 0.5,
        "source": "ALGORITHM",
        "from_edge": False,
        "label": "YES",
    }
    assert iq["result_type"] == "binary_classification"
    assert iq["intellioptics"]["escalation_reason"] == "no_model" and iq["intellioptics"]["escalated"]
    assert iq["done_processing"] is False and iq["metadata"] == {"camera": "line-3"}
    assert iq["patience_time"] == 12.0 and iq["confidence_threshold"] == 0.9
    assert iq["query"] == det["query"] and iq["detector_id"] == det["id"]
    assert http.get(f"{IQ_PATH}/{iq['id']}").json() == iq
    assert (
        db_scalar(cloud_db, "SELECT reason FROM review_items WHERE image_query_id = ?", iq["id"])
        == "no_model"
    )
    image = http.get(f"{IQ_PATH}/{iq['id']}/image")
    assert image.content == jpeg and image.headers["content-type"] == "image/jpeg"


def test_human_review_never_is_not_queued(http: httpx.Client, cloud_db: TestDatabase, jpeg: bytes) -> None:
    det = make_detector(http)
    iq = submit(http, det["id"], jpeg, human_review="NEVER").json()
    assert iq["done_processing"] is True and iq["result"]["source"] == "ALGORITHM"
    assert db_scalar(cloud_db, "SELECT count(*) FROM review_items WHERE image_query_id = ?", iq["id"]) == 0


def test_want_async_returns_a_pending_query_and_queues_it(
    http: httpx.Client, cloud_db: TestDatabase, jpeg: bytes
) -> None:
    det = make_detector(http)
    iq = submit(http, det["id"], jpeg, want_async="True", human_review="DEFAULT").json()
    assert iq["result"] is None and iq["done_processing"] is False
    assert (
        db_scalar(cloud_db, "SELECT reason FROM review_items WHERE image_query_id = ?", iq["id"])
        == "want_async"
    )


def test_format_comes_from_the_bytes_not_the_content_type(http: httpx.Client) -> None:
    det = make_detector(http)
    body = png()
    iq = submit(http, det["id"], body).json()  # labelled image/jpeg, as the SDK does
    image = http.get(f"{IQ_PATH}/{iq['id']}/image")
    assert image.content == body and image.headers["content-type"] == "image/png"


def test_concurrent_retries_with_one_request_id_make_one_query(
    http: httpx.Client, cloud_db: TestDatabase, jpeg: bytes
) -> None:
    det = make_detector(http)
    request_id = "req_uu" + secrets.token_hex(16)
    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda _: submit(http, det["id"], jpeg, request_id=request_id), range(10)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    listed = http.get(IQ_PATH, params={"detector_id": det["id"]}).json()
    assert listed["count"] == 1
    assert db_scalar(cloud_db, "SELECT count(*) FROM image_queries WHERE request_id = ?", request_id) == 1
    assert db_scalar(cloud_db, "SELECT count(*) FROM review_items WHERE detector_id = ?", det["id"]) == 1


def test_concurrent_retries_with_one_image_query_id_make_one_query(
    http: httpx.Client, cloud_db: TestDatabase, digits: list[tuple[bytes, int]]
) -> None:
    det = make_detector(http)
    iq_id = "iq_client" + secrets.token_hex(8)

    def post(i: int) -> httpx.Response:
        # Different request ids (separate SDK calls), the same image: the id decides.
        return submit(http, det["id"], digits[1][0], image_query_id=iq_id)

    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(post, range(10)))
    assert all(r.status_code == 200 and r.json()["id"] == iq_id for r in responses)
    assert http.get(IQ_PATH, params={"detector_id": det["id"]}).json()["count"] == 1
    assert db_scalar(cloud_db, "SELECT count(*) FROM image_queries WHERE id = ?", iq_id) == 1
    assert http.get(f"{IQ_PATH}/{iq_id}/image").content == digits[1][0]


def test_an_image_query_id_reused_with_another_image_or_detector_is_409(
    http: httpx.Client, digits: list[tuple[bytes, int]]
) -> None:
    det, other = make_detector(http), make_detector(http)
    iq_id = "iq_client" + secrets.token_hex(8)
    first = submit(http, det["id"], digits[2][0], image_query_id=iq_id)
    assert first.status_code == 200
    another_image = submit(http, det["id"], digits[3][0], image_query_id=iq_id)
    assert another_image.status_code == 409 and "different image" in another_image.json()["detail"]
    another_detector = submit(http, other["id"], digits[2][0], image_query_id=iq_id)
    assert another_detector.status_code == 409 and det["id"] in another_detector.json()["detail"]
    assert http.get(f"{IQ_PATH}/{iq_id}/image").content == digits[2][0]
    assert http.get(IQ_PATH, params={"detector_id": other["id"]}).json()["count"] == 0


def test_a_request_id_reused_for_another_detector_or_image_is_409(
    http: httpx.Client, digits: list[tuple[bytes, int]]
) -> None:
    det, other = make_detector(http), make_detector(http)
    request_id = "req_uu" + secrets.token_hex(16)
    first = submit(http, det["id"], digits[4][0], request_id=request_id)
    assert first.status_code == 200
    assert submit(http, det["id"], digits[4][0], request_id=request_id).json() == first.json()
    another_detector = submit(http, other["id"], digits[4][0], request_id=request_id)
    assert another_detector.status_code == 409, another_detector.text
    assert det["id"] in another_detector.json()["detail"] and first.json()["id"] not in another_detector.text
    another_image = submit(http, det["id"], digits[5][0], request_id=request_id)
    assert another_image.status_code == 409 and "different image" in another_image.json()["detail"]
    assert http.get(IQ_PATH, params={"detector_id": other["id"]}).json()["count"] == 0


def test_long_request_ids_are_kept_whole(
    http: httpx.Client, cloud_db: TestDatabase, digits: list[tuple[bytes, int]]
) -> None:
    det = make_detector(http)
    shared = "req_" + secrets.token_hex(62)  # 128 characters
    one, two = shared + "a" * 12, shared + "b" * 12
    first = submit(http, det["id"], digits[6][0], request_id=one)
    second = submit(http, det["id"], digits[6][0], request_id=two)
    assert first.status_code == second.status_code == 200
    assert first.json()["id"] != second.json()["id"]
    # Both are idempotency keys: each retry gets its own first answer.
    assert submit(http, det["id"], digits[6][0], request_id=one).json()["id"] == first.json()["id"]
    assert submit(http, det["id"], digits[6][0], request_id=two).json()["id"] == second.json()["id"]
    assert db_scalar(cloud_db, "SELECT count(*) FROM image_queries WHERE detector_id = ?", det["id"]) == 2


def bad_submissions(jpeg: bytes, detector_id: str) -> list[tuple[str, bytes, dict[str, str], int]]:
    ok = {"detector_id": detector_id}
    return [
        ("empty body", b"", ok, 400),
        ("gif", gif(), ok, 415),
        ("not an image", b'{"image": "no"}', ok, 415),
        ("truncated jpeg", jpeg[: len(jpeg) // 2], ok, 400),
        ("metadata not base64", jpeg, {**ok, "metadata": "!!nope!!"}, 400),
        ("metadata not an object", jpeg, {**ok, "metadata": b64json([1, 2])}, 400),
        ("metadata over 1 KiB", jpeg, {**ok, "metadata": b64json({"k": "x" * 1100})}, 400),
        (
            "metadata with NaN",
            jpeg,
            {**ok, "metadata": base64.urlsafe_b64encode(b'{"x": NaN}').decode()},
            400,
        ),
        ("metadata with a lone surrogate", jpeg, {**ok, "metadata": b64json({"a": "\ud800"})}, 400),
        ("metadata with NUL in a key", jpeg, {**ok, "metadata": b64json({"a\x00": 1})}, 400),
        ("metadata nested 9 deep", jpeg, {**ok, "metadata": b64json(nested(9))}, 400),
        ("threshold not a number", jpeg, {**ok, "confidence_threshold": "abc"}, 400),
        ("threshold over 1", jpeg, {**ok, "confidence_threshold": "1.5"}, 400),
        ("patience zero", jpeg, {**ok, "patience_time": "0"}, 400),
        ("human_review unknown", jpeg, {**ok, "human_review": "SOMETIMES"}, 400),
        ("want_async unknown", jpeg, {**ok, "want_async": "maybe"}, 400),
        ("image_query_id malformed", jpeg, {**ok, "image_query_id": "iq_../etc"}, 400),
        ("detector id malformed", jpeg, {"detector_id": "det_123"}, 400),
        ("detector id missing", jpeg, {}, 400),
        ("detector unknown", jpeg, {"detector_id": "det_" + "Z" * 27}, 404),
    ]


def test_bad_submissions_get_a_4xx_with_a_json_detail(
    http: httpx.Client, cloud_db: TestDatabase, jpeg: bytes
) -> None:
    det = make_detector(http)
    for name, body, params, status in bad_submissions(jpeg, det["id"]):
        resp = http.post(IQ_PATH, params=params, content=body, headers={"Content-Type": "image/jpeg"})
        assert resp.status_code == status, (name, resp.status_code, resp.text)
        assert resp.headers["content-type"].startswith("application/json"), name
        assert isinstance(resp.json()["detail"], str) and resp.json()["detail"], name
    assert db_scalar(cloud_db, "SELECT count(*) FROM image_queries WHERE detector_id = ?", det["id"]) == 0


@pytest.mark.processes
def test_an_image_over_the_size_limit_is_413(
    cloud_db: TestDatabase, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = CloudServer(
        cloud_db.url, tmp_path_factory.mktemp("small-cloud"), env={"CLOUD_MAX_IMAGE_BYTES": "2000"}
    )
    server.start()
    try:
        with server.client() as client:
            det = make_detector(client)
            resp = submit(client, det["id"], png(400) + b"\0" * 3000)
            assert resp.status_code == 413 and resp.json()["detail"]
    finally:
        server.stop()


def test_unknown_image_query_is_404(http: httpx.Client) -> None:
    for path in (f"{IQ_PATH}/iq_{'x' * 27}", f"{IQ_PATH}/iq_{'x' * 27}/image", f"{IQ_PATH}/bogus"):
        resp = http.get(path)
        assert resp.status_code == 404 and resp.json()["detail"], path


def test_image_query_list_pages_newest_first_per_detector(
    http: httpx.Client, cloud: CloudServer, digits: list[tuple[bytes, int]]
) -> None:
    det = make_detector(http)
    ids = [submit(http, det["id"], digits[i][0]).json()["id"] for i in range(3)]
    first = http.get(IQ_PATH, params={"detector_id": det["id"], "page_size": 2}).json()
    assert first["count"] == 3 and [iq["id"] for iq in first["results"]] == ids[::-1][:2]
    assert first["next"].startswith(f"{cloud.url}{IQ_PATH}?") and f"detector_id={det['id']}" in first["next"]
    second = http.get(first["next"]).json()
    assert [iq["id"] for iq in second["results"]] == [ids[0]] and second["next"] is None
    assert http.get(IQ_PATH, params={"detector_id": "det_bad"}).status_code == 400


# --- labels -----------------------------------------------------------------------------------


def test_a_label_answers_the_query_and_closes_its_review_item(
    http: httpx.Client, cloud_db: TestDatabase, jpeg: bytes
) -> None:
    det = make_detector(http)
    iq = submit(http, det["id"], jpeg).json()
    resp = http.post(LABEL_PATH, json={"label": "YES", "image_query_id": iq["id"], "rois": None})
    assert resp.status_code == 201, resp.text
    value = resp.json()
    assert value["class_name"] == "YES" and value["annotations_requested"] == [] and value["source"]
    assert {"confidence", "created_at", "detector_id", "text"} <= set(value)
    answered = http.get(f"{IQ_PATH}/{iq['id']}").json()
    assert answered["result"]["label"] == "YES" and answered["result"]["confidence"] == 1.0
    assert answered["result"]["source"] == "USER" and answered["done_processing"] is True
    assert (
        db_scalar(cloud_db, "SELECT status FROM review_items WHERE image_query_id = ?", iq["id"])
        == "answered"
    )
    assert db_scalar(cloud_db, "SELECT source FROM labels WHERE image_query_id = ?", iq["id"]) == "CUSTOMER"


def test_count_labels_become_counts_and_unclear_is_always_allowed(http: httpx.Client, jpeg: bytes) -> None:
    det = make_detector(http, mode="COUNT", mode_configuration={"class_name": "bolt", "max_count": 4})
    iq = submit(http, det["id"], jpeg).json()
    assert iq["result_type"] == "counting"
    assert http.post(LABEL_PATH, json={"label": 3, "image_query_id": iq["id"]}).status_code == 201
    result = http.get(f"{IQ_PATH}/{iq['id']}").json()["result"]
    assert result["count"] == 3 and result["result_type"] == "counting"
    assert http.post(LABEL_PATH, json={"label": "UNCLEAR", "image_query_id": iq["id"]}).status_code == 201
    assert http.get(f"{IQ_PATH}/{iq['id']}").json()["result"]["count"] is None


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"label": "MAYBE"}, 400),
        ({"label": "5"}, 400),
        ({}, 400),
        ({"label": "YES", "image_query_id": "iq_" + "n" * 27}, 404),
    ],
)
def test_bad_labels_are_refused(http: httpx.Client, jpeg: bytes, body: dict[str, Any], status: int) -> None:
    det = make_detector(http)
    iq = submit(http, det["id"], jpeg).json()
    resp = http.post(LABEL_PATH, json={"image_query_id": iq["id"], **body})
    assert resp.status_code == status, resp.text
    assert resp.json()["detail"]
    # Still the prior's answer: a refused label changes nothing.
    assert http.get(f"{IQ_PATH}/{iq['id']}").json()["result"] == iq["result"]
    assert iq["result"]["source"] == "ALGORITHM"
