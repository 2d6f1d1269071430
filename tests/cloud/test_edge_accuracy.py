"""The edge's accuracy on audited answers: audits arrive through the real escalation intake, reviewers
answer them in the review queue, and `GET /api/v1/detectors/{id}/edge-accuracy` and the detector page
report n, correct and the exact (Clopper–Pearson) 95 % interval, overall and per edge model version."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from cloud.app.core.edge_accuracy import clopper_pearson, judge, regularized_beta
from common.wire.device_api import EdgeDiagnostics, ImageQuery, Result, ResultType
from common.wire.escalation import EscalationCreate, EscalationReason
from tests.support.cloud import CloudServer
from tests.support.cloud_factories import CloudFactory, Reviewer, png

pytestmark = pytest.mark.in_process

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    pass

ESC_PATH = "/api/v1/escalations"


def accuracy_path(detector_id: str) -> str:
    return f"/api/v1/detectors/{detector_id}/edge-accuracy"


@pytest.fixture(scope="module")
def device(cloud: CloudServer) -> Iterator[httpx.Client]:
    with cloud.client() as client:
        yield client


@dataclass(frozen=True)
class Audit:
    """What the edge said; `answer` is what the reviewer will say."""

    edge_label: str
    answer: str
    model_version: str | None = "v1"
    reason: EscalationReason = EscalationReason.AUDIT
    patience_s: float = 30.0
    age_s: float = 5.0


def escalate(device: httpx.Client, detector_id: str, mode: str, audit: Audit, seed: int) -> str:
    """POST the escalation an edge's outbox would send; the new image query's id."""
    iq_id = "iq_" + secrets.token_hex(13)
    result_type = {
        "BINARY": ResultType.BINARY,
        "COUNT": ResultType.COUNTING,
        "MULTI_CLASS": ResultType.MULTI_CLASS,
    }[mode]
    confident = audit.reason is EscalationReason.AUDIT
    created = (datetime.now(UTC) - timedelta(seconds=audit.age_s)).isoformat()
    iq = ImageQuery(
        id=iq_id,
        created_at=created,
        query="What does the camera see?",
        detector_id=detector_id,
        result_type=result_type,
        result=Result(
            result_type=result_type,
            confidence=0.97 if confident else 0.6,
            label=audit.edge_label,
            count=int(audit.edge_label) if mode == "COUNT" else None,
            from_edge=True,
        ),
        patience_time=audit.patience_s,
        confidence_threshold=0.9,
        done_processing=confident,
        intellioptics=EdgeDiagnostics(
            model_version=audit.model_version,
            escalated=True,
            escalation_reason=audit.reason.value,
            audit=confident,
        ),
    )
    payload = EscalationCreate(
        image_query_id=iq_id,
        detector_id=detector_id,
        reason=audit.reason,
        image_query=iq,
        image_content_type="image/png",
        edge_id="edge-accuracy-test",
        created_at=created,
    )
    files: dict[str, tuple[str | None, bytes | str, str]] = {
        "escalation": (None, payload.model_dump_json(), "application/json"),
        "image": ("image", png(seed), "image/png"),
    }
    resp = device.post(ESC_PATH, files=files)
    assert resp.status_code == 201, resp.text
    return iq_id


def answer_queue(cloud: CloudServer, who: Reviewer, detector_id: str, answers: dict[str, str]) -> list[str]:
    """Claim and answer every item of the detector with the answer meant for its query; the queries in
    the order they were answered."""
    done: list[str] = []
    with cloud.client(token=who.token) as http:
        while True:
            resp = http.post("/api/v1/review/claim", params={"detector_id": detector_id})
            if resp.status_code == 204:
                return done
            assert resp.status_code == 200, resp.text
            item = resp.json()
            label = answers[item["image_query_id"]]
            answered = http.post(f"/api/v1/review/items/{item['id']}/answer", json={"label": label})
            assert answered.status_code == 200, answered.text
            done.append(item["image_query_id"])


def audit_and_answer(
    cloud: CloudServer, device: httpx.Client, factory: CloudFactory, mode: str, audits: list[Audit]
) -> tuple[str, Reviewer, list[str]]:
    detector_id = factory.detector(mode=mode)
    ids = [escalate(device, detector_id, mode, audit, seed) for seed, audit in enumerate(audits)]
    who = factory.reviewer()
    answer_queue(cloud, who, detector_id, {iq: a.answer for iq, a in zip(ids, audits, strict=True)})
    return detector_id, who, ids


def accuracy(device: httpx.Client, detector_id: str) -> dict[str, Any]:
    resp = device.get(accuracy_path(detector_id))
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


# -- the interval itself ------------------------------------------------------------------------------------


def test_nine_of_ten_gives_the_textbook_clopper_pearson_interval() -> None:
    interval = clopper_pearson(9, 10)
    assert interval is not None
    assert interval == pytest.approx((0.554984, 0.997471), abs=1e-6)


@pytest.mark.parametrize(
    ("k", "n"),
    [(0, 1), (1, 1), (0, 10), (10, 10), (3, 7), (1, 1000), (999, 1000), (50, 100), (41_234, 50_000)],
)
def test_the_interval_is_the_exact_one_scipy_computes(k: int, n: int) -> None:
    beta = pytest.importorskip("scipy.stats").beta  # SciPy comes with the training extra
    low, high = clopper_pearson(k, n) or (None, None)
    want_low = 0.0 if k == 0 else beta.ppf(0.025, k, n - k + 1)
    want_high = 1.0 if k == n else beta.ppf(0.975, k + 1, n - k)
    assert low == pytest.approx(want_low, abs=1e-9)
    assert high == pytest.approx(want_high, abs=1e-9)


def test_the_incomplete_beta_matches_scipy_on_both_sides_of_the_mean() -> None:
    beta = pytest.importorskip("scipy.stats").beta
    for a, b in ((0.5, 0.5), (2.0, 30.0), (300.0, 4.0), (9.0, 2.0)):
        for x in (0.001, 0.1, 0.5, 0.9, 0.999):
            assert regularized_beta(x, a, b) == pytest.approx(beta.cdf(x, a, b), abs=1e-12)


def test_no_trials_give_no_interval_and_impossible_counts_are_refused() -> None:
    assert clopper_pearson(0, 0) is None
    with pytest.raises(ValueError):
        clopper_pearson(4, 3)


def test_counts_are_compared_as_numbers_and_labels_as_text() -> None:
    edge = {"result_type": "counting", "label": "3", "count": 3, "from_edge": True}
    assert judge("COUNT", edge, "3") is True and judge("COUNT", edge, "4") is False
    assert judge("COUNT", {"label": "03", "from_edge": True}, "3") is True
    assert judge("BINARY", {"label": "YES", "from_edge": True}, "NO") is False
    assert judge("BINARY", {"label": "YES", "from_edge": False}, "YES") is None  # not the edge's answer


# -- from the intake through the review queue ---------------------------------------------------------------


def test_nine_correct_audits_of_ten_give_accuracy_and_interval(
    cloud: CloudServer, device: httpx.Client, factory: CloudFactory
) -> None:
    audits = [Audit("YES", "YES")] * 9 + [Audit("YES", "NO")]
    detector_id, _, _ = audit_and_answer(cloud, device, factory, "BINARY", audits)
    body = accuracy(device, detector_id)
    assert body["detector_id"] == detector_id and body["mode"] == "BINARY"
    assert body["confidence_level"] == 0.95
    overall = body["overall"]
    assert (overall["n"], overall["correct"], overall["accuracy"]) == (10, 9, 0.9)
    assert overall["interval_low"] == pytest.approx(0.555, abs=1e-3)
    assert overall["interval_high"] == pytest.approx(0.997, abs=1e-3)
    assert [v["model_version"] for v in body["by_model_version"]] == ["v1"]
    assert body["by_model_version"][0]["n"] == 10 and body["by_model_version"][0]["correct"] == 9
    assert body["awaiting_review"] == 0 and body["unclear"] == 0


def test_unclear_undone_unanswered_and_non_audit_answers_do_not_count(
    cloud: CloudServer, device: httpx.Client, factory: CloudFactory
) -> None:
    detector_id = factory.detector()
    plan = {
        "right": Audit("YES", "YES"),
        "unclear": Audit("NO", "UNCLEAR"),
        "unsure": Audit("NO", "NO", reason=EscalationReason.LOW_CONFIDENCE),
        # Last in queue order (latest deadline), so it is the reviewer's last answer, which undo takes back.
        "undone": Audit("YES", "NO", patience_s=600.0),
    }
    ids = {
        name: escalate(device, detector_id, "BINARY", a, seed) for seed, (name, a) in enumerate(plan.items())
    }
    escalate(device, factory.detector(), "BINARY", Audit("YES", "YES"), 9)  # another detector's audit

    empty = accuracy(device, detector_id)
    assert empty["overall"] == {
        "n": 0,
        "correct": 0,
        "accuracy": None,
        "interval_low": None,
        "interval_high": None,
    }
    assert empty["by_model_version"] == [] and empty["awaiting_review"] == 3

    who = factory.reviewer()
    order = answer_queue(cloud, who, detector_id, {ids[name]: a.answer for name, a in plan.items()})
    assert order[-1] == ids["undone"]
    with cloud.client(token=who.token) as http:
        undone = http.post("/api/v1/review/undo")
        assert undone.status_code == 200 and undone.json()["image_query_id"] == ids["undone"]

    body = accuracy(device, detector_id)
    assert (body["overall"]["n"], body["overall"]["correct"]) == (1, 1)
    assert body["overall"]["interval_low"] == pytest.approx(0.025, abs=1e-6)
    assert body["overall"]["interval_high"] == 1.0
    assert body["unclear"] == 1 and body["awaiting_review"] == 1

    # Answered again, it counts with its new answer (a mistake of the edge this time).
    answer_queue(cloud, who, detector_id, {ids["undone"]: "NO"})
    body = accuracy(device, detector_id)
    assert (body["overall"]["n"], body["overall"]["correct"]) == (2, 1)
    assert body["awaiting_review"] == 0


def test_count_detectors_compare_counts_per_model_version_newest_first(
    cloud: CloudServer, device: httpx.Client, factory: CloudFactory
) -> None:
    audits = [
        Audit("3", "3", model_version="count-v1", age_s=120),
        Audit("3", "4", model_version="count-v1", age_s=110),
        Audit("0", "0", model_version="count-v1", age_s=100),
        Audit("7", "7", model_version="count-v2", age_s=20),
        Audit("10", "10", model_version="count-v2", age_s=10),
        Audit("2", "2", model_version=None, age_s=60),
    ]
    detector_id, _, _ = audit_and_answer(cloud, device, factory, "COUNT", audits)
    body = accuracy(device, detector_id)
    assert (body["overall"]["n"], body["overall"]["correct"]) == (6, 5)
    by_version = {v["model_version"]: (v["n"], v["correct"]) for v in body["by_model_version"]}
    assert by_version == {"count-v2": (2, 2), "count-v1": (3, 2), None: (1, 1)}
    assert [v["model_version"] for v in body["by_model_version"]] == ["count-v2", None, "count-v1"]
    v1 = next(v for v in body["by_model_version"] if v["model_version"] == "count-v1")
    low, high = clopper_pearson(2, 3) or (0.0, 0.0)
    assert (v1["interval_low"], v1["interval_high"]) == (
        pytest.approx(low, abs=1e-6),
        pytest.approx(high, abs=1e-6),
    )


def test_any_signed_in_caller_may_read_it_and_an_unknown_detector_is_404(
    cloud: CloudServer, device: httpx.Client, factory: CloudFactory
) -> None:
    detector_id = factory.detector()
    reviewer = factory.reviewer()
    with cloud.client(token=reviewer.token) as http:
        assert http.get(accuracy_path(detector_id)).status_code == 200
    browser = cloud.login()
    try:
        assert browser.get(accuracy_path(detector_id)).status_code == 200
    finally:
        browser.close()
    with cloud.client(token=None) as anonymous:
        assert anonymous.get(accuracy_path(detector_id)).status_code == 401
    missing = device.get(accuracy_path("det_" + "0" * 27))
    assert missing.status_code == 404 and "not found" in missing.json()["detail"]
    assert device.get(accuracy_path("not an id!")).status_code == 400


def test_the_detector_page_shows_the_edge_accuracy(
    cloud: CloudServer, device: httpx.Client, factory: CloudFactory
) -> None:
    audits = [Audit("NO", "NO", model_version="page-v3")] * 9 + [Audit("NO", "YES", model_version="page-v3")]
    detector_id, _, _ = audit_and_answer(cloud, device, factory, "BINARY", audits)
    escalate(device, detector_id, "BINARY", Audit("NO", "NO"), 99)  # awaiting review
    browser = cloud.login()
    try:
        page = browser.get(f"/ui/detectors/{detector_id}")
    finally:
        browser.close()
    assert page.status_code == 200
    section = page.text[page.text.index('id="edge-accuracy"') :]
    section = section[: section.index("</section>")]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", section))
    assert "accuracy 90.0 %" in text
    assert "95 % interval 55.5 % – 99.7 %" in text
    assert "correct 9 of 10" in text and "awaiting review 1" in text
    assert re.search(r"page-v3 10 9 90\.0 % 55\.5 % – 99\.7 %", text), text

    fresh = factory.detector()
    browser = cloud.login()
    try:
        empty = browser.get(f"/ui/detectors/{fresh}").text
    finally:
        browser.close()
    assert "No answered audits yet" in empty
