"""The review queue over HTTP against the real cloud process: leases, exactly-once answers, skip,
undo, expiry and queue order. Each test makes its own detector and reviewers, so tests sharing the
database never see each other's items."""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from cloud.app.db.models import Role
from tests.support.cloud import DEVICE_TOKEN, CloudServer, cloud_kind
from tests.support.cloud_factories import CloudFactory, ItemRef, Reviewer

pytestmark = pytest.mark.in_process

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    from tests.support.cloud import TestDatabase

UNCLEAR = "UNCLEAR"


def api(cloud: CloudServer, who: Reviewer) -> httpx.Client:
    return cloud.client(token=who.token)


def claim(http: httpx.Client, detector_id: str) -> dict[str, Any] | None:
    resp = http.post("/api/v1/review/claim", params={"detector_id": detector_id})
    if resp.status_code == 204:
        return None
    assert resp.status_code == 200, resp.text
    item: dict[str, Any] = resp.json()
    return item


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# -- many reviewers at once ---------------------------------------------------------------------------------


@dataclass
class ClaimRecord:
    item_id: int
    reviewer: str
    claimed_at: float  # monotonic, when the claim's response arrived
    released_at: float  # monotonic, when the answer's response arrived
    answer_status: int


def drain(
    cloud: CloudServer, reviewers: list[Reviewer], detector_id: str, with_next: bool = False
) -> list[ClaimRecord]:
    """Every reviewer claims and answers until the detector's queue is empty; all claims recorded.
    `with_next`: as the labeling page does, each answer also claims the next item (`?next=true`)."""
    records: list[ClaimRecord] = []
    lock = threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(len(reviewers))

    def work(who: Reviewer) -> None:
        try:
            with api(cloud, who) as http:
                start.wait()
                item = claim(http, detector_id)
                got = time.monotonic()
                while item is not None:
                    label = "YES" if item["id"] % 2 else "NO"
                    params = {"next": "true", "detector_id": detector_id} if with_next else {}
                    resp = http.post(
                        f"/api/v1/review/items/{item['id']}/answer", json={"label": label}, params=params
                    )
                    answered = time.monotonic()
                    with lock:
                        records.append(ClaimRecord(item["id"], who.user_id, got, answered, resp.status_code))
                    following = resp.json().get("next") if resp.status_code == 200 else None
                    if with_next and following is not None:
                        item, got = following, answered
                    else:
                        item = claim(http, detector_id)
                        got = time.monotonic()
        except BaseException as exc:  # surfaced in the test below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(who,)) for who in reviewers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    return records


def assert_drained_exactly_once(
    factory: CloudFactory, detector_id: str, items: list[ItemRef], records: list[ClaimRecord]
) -> None:
    ids = {ref.item_id for ref in items}
    # Nobody's answer was refused: no item was ever handed to two reviewers.
    assert Counter(r.answer_status for r in records) == {200: len(items)}
    claims = Counter(r.item_id for r in records)
    assert set(claims) == ids and set(claims.values()) == {1}
    by_item: dict[int, list[ClaimRecord]] = defaultdict(list)
    for r in records:
        by_item[r.item_id].append(r)
    for held in by_item.values():
        spans = sorted((r.claimed_at, r.released_at) for r in held)
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    # The database agrees: one standing human label per item, by the reviewer who held it.
    labels = factory.labels(detector_id)
    assert len(labels) == len(items)
    assert Counter(label["review_item_id"] for label in labels) == dict.fromkeys(ids, 1)
    holder = {r.item_id: r.reviewer for r in records}
    assert all(label["user_id"] == holder[label["review_item_id"]] for label in labels)
    assert all(label["source"] == "HUMAN" and label["undone_at"] is None for label in labels)
    rows = factory.items(detector_id)
    assert all(row["status"] == "answered" and row["lease_owner"] is None for row in rows.values())


@pytest.mark.postgres_only
def test_eight_reviewers_drain_2000_items_each_answered_once_never_held_twice(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector()
    items = factory.review_items(detector_id, 2000)
    reviewers = [factory.reviewer() for _ in range(8)]
    records = drain(cloud, reviewers, detector_id, with_next=True)
    assert_drained_exactly_once(factory, detector_id, items, records)
    # The work was shared (SKIP LOCKED lets claims pass each other instead of queueing).
    per_reviewer = Counter(r.reviewer for r in records)
    assert len(per_reviewer) == 8


def test_four_reviewers_drain_a_small_queue_each_item_answered_once(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector()
    items = factory.review_items(detector_id, 120)
    records = drain(cloud, [factory.reviewer() for _ in range(4)], detector_id)
    assert_drained_exactly_once(factory, detector_id, items, records)


# -- leases -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_lease_cloud(
    request: pytest.FixtureRequest, cloud_db: TestDatabase, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CloudServer]:
    """A second cloud API on the same database whose leases last one second."""
    server = cloud_kind(request.node)(
        cloud_db.url, Path(tmp_path_factory.mktemp("cloud-short-lease")), env={"CLOUD_REVIEW_LEASE_S": "1"}
    ).start()
    yield server
    server.stop()


def test_expired_lease_returns_the_item_to_the_queue(
    short_lease_cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector()
    (item,) = factory.review_items(detector_id, 1)
    first, second = factory.reviewer(), factory.reviewer()
    with api(short_lease_cloud, first) as a, api(short_lease_cloud, second) as b:
        held = claim(a, detector_id)
        assert held is not None and held["id"] == item.item_id and held["lease_s"] == 1
        assert claim(b, detector_id) is None  # leased: nobody else gets it
        expires = parse_time(held["lease_expires_at"])
        time.sleep(1.3)
        again = claim(b, detector_id)
        assert again is not None and again["id"] == item.item_id
        # The second lease starts after the first one ended: never held twice at once.
        assert parse_time(again["lease_expires_at"]) - timedelta(seconds=1) >= expires - timedelta(
            milliseconds=50
        )
        assert a.post(f"/api/v1/review/items/{item.item_id}/heartbeat").status_code == 409
        late = a.post(f"/api/v1/review/items/{item.item_id}/answer", json={"label": "YES"})
        assert late.status_code == 409 and "not leased to you" in late.json()["detail"]
        assert b.post(f"/api/v1/review/items/{item.item_id}/answer", json={"label": "NO"}).status_code == 200
    labels = factory.labels(detector_id)
    assert [(label["label"], label["user_id"]) for label in labels] == [("NO", second.user_id)]


def test_an_expired_lease_cannot_answer_even_when_nobody_reclaimed(
    short_lease_cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector()
    (item,) = factory.review_items(detector_id, 1)
    who = factory.reviewer()
    with api(short_lease_cloud, who) as http:
        assert claim(http, detector_id) is not None
        time.sleep(1.3)
        resp = http.post(f"/api/v1/review/items/{item.item_id}/answer", json={"label": "YES"})
        assert resp.status_code == 409 and "expired" in resp.json()["detail"]
        assert claim(http, detector_id) is not None  # claim again, then it works
        assert (
            http.post(f"/api/v1/review/items/{item.item_id}/answer", json={"label": "YES"}).status_code == 200
        )


def test_a_lapsed_lease_is_taken_back_by_item_unless_someone_else_holds_it(
    short_lease_cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector()
    first_item, second_item = factory.review_items(detector_id, 2)
    who, rival = factory.reviewer(), factory.reviewer()
    with api(short_lease_cloud, who) as http, api(short_lease_cloud, rival) as other:
        held = claim(http, detector_id)
        assert held is not None and held["id"] == first_item.item_id
        # Taking back one's own live lease just renews it.
        again = http.post(f"/api/v1/review/items/{first_item.item_id}/claim")
        assert again.status_code == 200 and again.json()["id"] == first_item.item_id
        assert other.post(f"/api/v1/review/items/{first_item.item_id}/claim").status_code == 409
        time.sleep(1.3)
        # Lapsed, nobody else took it: the holder takes it back, and the answer goes through once.
        back = http.post(f"/api/v1/review/items/{first_item.item_id}/claim")
        assert back.status_code == 200 and parse_time(back.json()["lease_expires_at"]) > datetime.now(UTC)
        answered = http.post(f"/api/v1/review/items/{first_item.item_id}/answer", json={"label": "YES"})
        assert answered.status_code == 200
        done = http.post(f"/api/v1/review/items/{first_item.item_id}/claim")
        assert done.status_code == 409 and "already answered" in done.json()["detail"]
        # Lapsed and claimed by someone else meanwhile: not taken back, and the detail says why.
        assert claim(http, detector_id) is not None
        time.sleep(1.3)
        taken = claim(other, detector_id)
        assert taken is not None and taken["id"] == second_item.item_id
        refused = http.post(f"/api/v1/review/items/{second_item.item_id}/claim")
        assert refused.status_code == 409 and "another reviewer holds" in refused.json()["detail"]
        assert http.post("/api/v1/review/items/999999999/claim").status_code == 404
    labels = factory.labels(detector_id)
    assert [(label["review_item_id"], label["user_id"]) for label in labels] == [
        (first_item.item_id, who.user_id)
    ]


def test_heartbeat_extends_the_lease_and_keeps_it_past_the_first_expiry(
    short_lease_cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector()
    (item,) = factory.review_items(detector_id, 1)
    who, other = factory.reviewer(), factory.reviewer()
    with api(short_lease_cloud, who) as http, api(short_lease_cloud, other) as rival:
        held = claim(http, detector_id)
        assert held is not None
        for _ in range(4):
            time.sleep(0.4)
            beat = http.post(f"/api/v1/review/items/{item.item_id}/heartbeat")
            assert beat.status_code == 200, beat.text
        assert parse_time(beat.json()["lease_expires_at"]) > parse_time(held["lease_expires_at"])
        assert claim(rival, detector_id) is None  # 1.6 s after the claim, still held
        assert (
            http.post(f"/api/v1/review/items/{item.item_id}/answer", json={"label": "YES"}).status_code == 200
        )


def test_only_the_lease_holder_may_heartbeat_answer_or_skip(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector()
    (item,) = factory.review_items(detector_id, 1)
    holder, other = factory.reviewer(), factory.reviewer()
    url = f"/api/v1/review/items/{item.item_id}"
    with api(cloud, holder) as a, api(cloud, other) as b:
        held = claim(a, detector_id)
        assert held is not None
        assert b.post(f"{url}/heartbeat").status_code == 409
        assert b.post(f"{url}/answer", json={"label": "YES"}).status_code == 409
        assert b.post(f"{url}/skip").status_code == 409
        assert b.post(f"{url}/release").status_code == 409
        beat = a.post(f"{url}/heartbeat")
        assert beat.status_code == 200
        assert parse_time(beat.json()["lease_expires_at"]) >= parse_time(held["lease_expires_at"])
        assert a.post(f"{url}/answer", json={"label": "YES"}).status_code == 200
        # Exactly once: a second answer, by anyone, is refused.
        again = a.post(f"{url}/answer", json={"label": "NO"})
        assert again.status_code == 409 and "already answered" in again.json()["detail"]
        assert b.post(f"{url}/answer", json={"label": "NO"}).status_code == 409
        assert a.post(f"{url}/heartbeat").status_code == 409
        assert a.post("/api/v1/review/items/999999999/answer", json={"label": "YES"}).status_code == 404
    assert [label["label"] for label in factory.labels(detector_id)] == ["YES"]


# -- skip, undo -------------------------------------------------------------------------------------------


def test_skipped_item_goes_to_other_reviewers_not_back_to_the_skipper(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector()
    first_item, second_item = factory.review_items(detector_id, 2)
    skipper, other = factory.reviewer(), factory.reviewer()
    with api(cloud, skipper) as a, api(cloud, other) as b:
        held = claim(a, detector_id)
        assert held is not None and held["id"] == first_item.item_id
        assert a.post(f"/api/v1/review/items/{first_item.item_id}/skip").status_code == 204
        nxt = claim(a, detector_id)
        assert nxt is not None and nxt["id"] == second_item.item_id
        assert (
            a.post(f"/api/v1/review/items/{second_item.item_id}/answer", json={"label": "NO"}).status_code
            == 200
        )
        assert claim(a, detector_id) is None  # only the skipped item is left, and not for them
        taken = claim(b, detector_id)
        assert taken is not None and taken["id"] == first_item.item_id
    row = factory.items(detector_id)[first_item.item_id]
    assert row["status"] == "pending" and row["lease_owner"] == other.user_id


def test_a_skip_is_listed_until_answered_and_can_be_taken_back(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector(name=f"skips-{time.monotonic_ns()}")
    first_item, second_item = factory.review_items(detector_id, 2)
    who, other = factory.reviewer(), factory.reviewer()
    with api(cloud, who) as http, api(cloud, other) as rival:
        for expected in (first_item, second_item):
            held = claim(http, detector_id)
            assert held is not None and held["id"] == expected.item_id
            assert http.post(f"/api/v1/review/items/{expected.item_id}/skip").status_code == 204
        listed = http.get("/api/v1/review/skipped").json()
        assert [s["item_id"] for s in listed] == [second_item.item_id, first_item.item_id]  # latest first
        assert listed[0]["detector_id"] == detector_id and listed[0]["query"] == "Is the door closed?"
        assert rival.get("/api/v1/review/skipped").json() == []  # one's own skips only
        assert claim(http, detector_id) is None
        # Taken back: offered again; twice, or for an item never skipped, is a 404.
        assert http.delete(f"/api/v1/review/items/{first_item.item_id}/skip").status_code == 204
        assert http.delete(f"/api/v1/review/items/{first_item.item_id}/skip").status_code == 404
        back = claim(http, detector_id)
        assert back is not None and back["id"] == first_item.item_id
        # An answered item leaves the list, whoever answered it.
        taken = claim(rival, detector_id)
        assert taken is not None and taken["id"] == second_item.item_id
        assert (
            rival.post(f"/api/v1/review/items/{second_item.item_id}/answer", json={"label": "NO"}).status_code
            == 200
        )
        assert http.get("/api/v1/review/skipped").json() == []


@pytest.mark.postgres_only
def test_a_detector_left_out_of_label_all_is_offered_only_from_its_own_queue(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    # Deadlines far ahead: other tests' items (due sooner) come first in "Label all", so look for ours.
    later = [datetime.now(UTC) + timedelta(days=3650)]
    left_out, kept = factory.detector(), factory.detector()
    (out_item,) = factory.review_items(left_out, 1, deadlines=later)
    (kept_item,) = factory.review_items(kept, 1, deadlines=later)
    who = factory.reviewer()
    with api(cloud, who) as http:
        resp = http.put(f"/api/v1/review/queues/{left_out}/label-all", json={"included": False})
        assert resp.status_code == 204
        summaries = {q["detector_id"]: q for q in http.get("/api/v1/review/queues").json()}
        assert summaries[left_out]["in_label_all"] is False and summaries[kept]["in_label_all"] is True
        offered = []
        while (held := claim_any(http)) is not None:
            offered.append(held["id"])
        assert kept_item.item_id in offered and out_item.item_id not in offered
        release_all(http, offered)  # other tests' leftovers were claimed too: give them back
        own = claim(http, left_out)  # its own queue still offers it
        assert own is not None and own["id"] == out_item.item_id
        assert http.post(f"/api/v1/review/items/{out_item.item_id}/release").status_code == 204
        assert (
            http.put(f"/api/v1/review/queues/{left_out}/label-all", json={"included": True}).status_code
            == 204
        )
        back = []
        while (held := claim_any(http)) is not None:
            back.append(held["id"])
        assert out_item.item_id in back
        release_all(http, back)
        missing = http.put("/api/v1/review/queues/det_" + "Z" * 27 + "/label-all", json={"included": False})
        assert missing.status_code == 404


def release_all(http: httpx.Client, item_ids: list[int]) -> None:
    for item_id in item_ids:
        assert http.post(f"/api/v1/review/items/{item_id}/release").status_code == 204


def claim_any(http: httpx.Client) -> dict[str, Any] | None:
    resp = http.post("/api/v1/review/claim")
    if resp.status_code == 204:
        return None
    assert resp.status_code == 200, resp.text
    item: dict[str, Any] = resp.json()
    return item


def test_release_returns_the_item_to_everyone_including_the_releaser(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector()
    (item,) = factory.review_items(detector_id, 1)
    who = factory.reviewer()
    with api(cloud, who) as http:
        assert claim(http, detector_id) is not None
        assert http.post(f"/api/v1/review/items/{item.item_id}/release").status_code == 204
        again = claim(http, detector_id)
        assert again is not None and again["id"] == item.item_id


def test_undo_takes_back_the_last_answer_and_restores_the_prior_result(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector()
    edge_result = {
        "result_type": "binary_classification",
        "label": "NO",
        "confidence": 0.61,
        "source": "ALGORITHM",
        "from_edge": True,
    }
    first, second = factory.review_items(detector_id, 2, result=edge_result)
    who = factory.reviewer()
    with api(cloud, who) as http:
        assert http.post("/api/v1/review/undo").status_code == 404  # nothing yet
        for ref, label in ((first, "YES"), (second, "UNCLEAR")):
            held = claim(http, detector_id)
            assert held is not None and held["id"] == ref.item_id
            assert (
                http.post(f"/api/v1/review/items/{ref.item_id}/answer", json={"label": label}).status_code
                == 200
            )
        answered = factory.image_query(second.image_query_id)
        assert answered["done_processing"] is True
        assert answered["result"] == {
            "result_type": "binary_classification",
            "confidence": 1.0,
            "source": "HUMAN",
            "from_edge": False,
            "label": "UNCLEAR",
        }
        undone = http.post("/api/v1/review/undo")
        assert undone.status_code == 200
        assert undone.json() == {
            "item_id": second.item_id,
            "image_query_id": second.image_query_id,
            "label": "UNCLEAR",
        }
        restored = factory.image_query(second.image_query_id)
        assert restored["result"] == edge_result and restored["done_processing"] is False
        row = factory.items(detector_id)[second.item_id]
        assert row["status"] == "pending" and row["lease_owner"] is None and row["answered_by"] is None
        # It is back in the queue; answer it again.
        held = claim(http, detector_id)
        assert held is not None and held["id"] == second.item_id
        assert (
            http.post(f"/api/v1/review/items/{second.item_id}/answer", json={"label": "NO"}).status_code
            == 200
        )
    labels = factory.labels(detector_id)
    assert [(label["review_item_id"], label["label"], label["undone_at"] is None) for label in labels] == [
        (first.item_id, "YES", True),
        (second.item_id, "UNCLEAR", False),
        (second.item_id, "NO", True),
    ]
    assert factory.image_query(first.image_query_id)["result"]["label"] == "YES"


# -- order and content ------------------------------------------------------------------------------------


def test_claims_come_in_deadline_then_uncertainty_then_age_order(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector()
    now = datetime.now(UTC)
    soon, later = now + timedelta(seconds=10), now + timedelta(seconds=60)
    old, new = now - timedelta(minutes=5), now - timedelta(minutes=1)
    # (deadline, uncertainty, created), inserted in an order that is none of the expected one.
    specs = {
        "late-sure": (later, 0.1, old),
        "late-unsure-new": (later, 0.9, new),
        "soon-sure": (soon, 0.2, new),
        "late-unsure-old": (later, 0.9, old),
        "soon-unsure": (soon, 0.8, new),
    }
    refs = factory.review_items(
        detector_id,
        len(specs),
        deadlines=[s[0] for s in specs.values()],
        uncertainties=[s[1] for s in specs.values()],
        created=[s[2] for s in specs.values()],
    )
    name_of = {ref.item_id: name for ref, name in zip(refs, specs, strict=True)}
    who = factory.reviewer()
    order = []
    with api(cloud, who) as http:
        while (held := claim(http, detector_id)) is not None:  # leases are kept: each claim takes the next
            order.append(name_of[held["id"]])
    assert order == ["soon-unsure", "soon-sure", "late-unsure-old", "late-unsure-new", "late-sure"]


def test_claimed_item_carries_what_the_reviewer_needs(cloud: CloudServer, factory: CloudFactory) -> None:
    detector_id = factory.detector(query="Is there a pallet in the bay?")
    result = {
        "result_type": "binary_classification",
        "label": "YES",
        "confidence": 0.55,
        "source": "ALGORITHM",
        "from_edge": True,
    }
    diagnostics = {"in_domain_score": 0.12, "out_of_domain": True, "raw_confidence": 0.8}
    (ref,) = factory.review_items(
        detector_id, 1, result=result, diagnostics=diagnostics, uncertainties=[0.45], with_images=True
    )
    who = factory.reviewer()
    with api(cloud, who) as http:
        item = claim(http, detector_id)
        assert item is not None
        assert item["id"] == ref.item_id and item["image_query_id"] == ref.image_query_id
        assert item["query"] == "Is there a pallet in the bay?" and item["mode"] == "BINARY"
        assert item["labels"] == ["YES", "NO"]
        assert item["answers"] == [
            {"label": "YES", "key": "y"},
            {"label": "NO", "key": "n"},
            {"label": "UNCLEAR", "key": "u"},
        ]
        assert item["prediction"] == {
            "label": "YES",
            "count": None,
            "confidence": 0.55,
            "source": "ALGORITHM",
            "from_edge": True,
        }
        assert item["in_domain_score"] == 0.12 and item["out_of_domain"] is True
        assert item["uncertainty"] == 0.45 and item["reason"] == "low_confidence"
        # Why, in words, with the numbers from the query: its confidence, threshold and in-domain score.
        assert item["confidence_threshold"] == 0.9
        assert item["reason_text"] == (
            "The model was 55 % sure of YES; the threshold is 90 %. The image looks unlike the images this "
            "detector learnt from (in-domain score 0.12, below 0.50), so the model's answer is not trusted."
        )
        assert parse_time(item["lease_expires_at"]) > datetime.now(UTC) + timedelta(seconds=30)
        assert parse_time(item["deadline"]) > parse_time(item["created_at"])
        assert item["image_url"] == f"{cloud.url}/api/v1/review/items/{ref.item_id}/image"
        image = http.get(item["image_url"])
        assert image.status_code == 200 and image.headers["content-type"] == "image/png"
        assert (
            image.content
            == (cloud.data_dir / "blobs" / f"images/{detector_id}/{ref.image_query_id}.png").read_bytes()
        )
        assert http.get("/api/v1/review/items/999999999/image").status_code == 404


def test_missing_image_blob_is_a_404(cloud: CloudServer, factory: CloudFactory) -> None:
    detector_id = factory.detector()
    (ref,) = factory.review_items(detector_id, 1, with_images=False)
    with api(cloud, factory.reviewer()) as http:
        resp = http.get(f"/api/v1/review/items/{ref.item_id}/image")
        assert resp.status_code == 404 and resp.json() == {"detail": "blob not found"}


def test_answers_are_the_detectors_labels_or_unclear(cloud: CloudServer, factory: CloudFactory) -> None:
    classes = factory.detector(
        mode="MULTI_CLASS", labels=["red", "green", "blue"], query="Which light is on?"
    )
    counts = factory.detector(mode="COUNT", query="How many boxes?")
    class_items = factory.review_items(classes, 2, mode="MULTI_CLASS")
    (count_item,) = factory.review_items(counts, 1, mode="COUNT", query="How many boxes?")
    with api(cloud, factory.reviewer()) as http:
        held = claim(http, classes)
        assert held is not None
        assert [a["key"] for a in held["answers"]] == ["1", "2", "3", "u"]
        url = f"/api/v1/review/items/{held['id']}/answer"
        bad = http.post(url, json={"label": "purple"})
        assert bad.status_code == 400 and "red" in bad.json()["detail"]
        assert http.post(url, json={}).status_code == 400
        assert http.post(url, json={"label": "green"}).json()["label"] == "green"
        held = claim(http, classes)
        assert held is not None
        unclear = http.post(f"/api/v1/review/items/{held['id']}/answer", json={"label": "unclear"})
        assert unclear.status_code == 200 and unclear.json()["label"] == UNCLEAR
        counted = claim(http, counts)
        assert counted is not None and counted["id"] == count_item.item_id
        assert [a["key"] for a in counted["answers"]][:3] == ["0", "1", "2"]
        assert counted["answers"][10] == {"label": "10", "key": None}
        resp = http.post(f"/api/v1/review/items/{count_item.item_id}/answer", json={"label": 3})
        assert resp.status_code == 200, resp.text
    result = factory.image_query(count_item.image_query_id)["result"]
    assert result["result_type"] == "counting" and result["count"] == 3 and result["confidence"] == 1.0
    assert result["source"] == "HUMAN" and result["from_edge"] is False
    assert next(label["label"] for label in factory.labels(classes)) == "green"
    assert class_items[0].item_id in {label["review_item_id"] for label in factory.labels(classes)}


# -- queues, stats, access --------------------------------------------------------------------------------


def test_queues_report_pending_claimable_and_answered_per_detector(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector(name=f"queue-counts-{time.time_ns()}")
    factory.review_items(detector_id, 4)
    who, other = factory.reviewer(), factory.reviewer()
    with api(cloud, who) as a, api(cloud, other) as b:
        first = claim(a, detector_id)
        assert first is not None
        assert a.post(f"/api/v1/review/items/{first['id']}/answer", json={"label": "YES"}).status_code == 200
        held = claim(a, detector_id)  # held by `who`
        skipped = claim(b, detector_id)
        assert held is not None and skipped is not None
        assert b.post(f"/api/v1/review/items/{skipped['id']}/skip").status_code == 204
        mine = {q["detector_id"]: q for q in b.get("/api/v1/review/queues").json()}[detector_id]
        assert mine["pending"] == 3 and mine["answered_last_hour"] == 1
        assert mine["claimable"] == 1  # one leased by `who`, one skipped by `other`
        theirs = {q["detector_id"]: q for q in a.get("/api/v1/review/queues").json()}[detector_id]
        assert theirs["claimable"] == 2


def test_stats_report_throughput_and_lead_time_per_reviewer(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector()
    factory.review_items(detector_id, 3)
    who = factory.reviewer()
    with api(cloud, who) as http:
        for _ in range(3):
            held = claim(http, detector_id)
            assert held is not None
            assert (
                http.post(f"/api/v1/review/items/{held['id']}/answer", json={"label": "NO"}).status_code
                == 200
            )
        stats = http.get("/api/v1/review/stats", params={"window_s": 3600})
        assert stats.status_code == 200
        mine = {r["user_id"]: r for r in stats.json()["reviewers"]}[who.user_id]
        assert mine["answered"] == 3 and mine["items_per_hour"] == 3.0 and mine["username"] == who.username
        # Items were created 1-3 s before the test answered them.
        assert 0 < mine["lead_time_p50_s"] <= mine["lead_time_p95_s"] < 300
        assert mine["handle_time_p50_s"] is not None and mine["handle_time_p50_s"] >= 0
        assert http.get("/api/v1/review/stats", params={"window_s": -1}).status_code == 400
    # A customer's add_label closes an item too, but that is no reviewer's throughput.
    (other,) = factory.review_items(detector_id, 1)
    with cloud.client(token=DEVICE_TOKEN) as device:
        labelled = device.post(
            "/device-api/v1/labels", json={"image_query_id": other.image_query_id, "label": "YES"}
        )
        assert labelled.status_code == 201, labelled.text
        device_user = device.get("/device-api/v1/me").json()
    with api(cloud, who) as http:
        before_api = stats.json()["api_answered"]
        after = http.get("/api/v1/review/stats", params={"window_s": 3600}).json()
        names = {r["username"] for r in after["reviewers"]}
    assert who.username in names and device_user.get("username") not in names
    # ...it is counted apart, as answers through the API.
    assert after["api_answered"] == before_api + 1


def test_review_api_needs_a_reviewer_and_reviewers_cannot_administer(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    with cloud.client(token=None) as anonymous:
        assert anonymous.post("/api/v1/review/claim").status_code == 401
        assert anonymous.get("/api/v1/review/queues").status_code == 401
    with cloud.client(token=DEVICE_TOKEN) as device:
        assert device.post("/api/v1/review/claim").status_code == 403
    reviewer = factory.reviewer()
    with api(cloud, reviewer) as http:
        assert http.get("/api/v1/review/queues").status_code == 200
        assert http.get("/api/v1/admin/users").status_code == 403
    admin = factory.reviewer(role=Role.ADMIN)
    with api(cloud, admin) as http:
        assert http.get("/api/v1/review/queues").status_code == 200
