"""The reviewer's pages: log in, the session cookie, pages behind it, and (in headless Chromium) the
labeling page used with the keyboard only."""

from __future__ import annotations

import html
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import httpx
import pytest
from playwright.sync_api import expect

from tests.support.browser import artifact, chromium
from tests.support.cloud import CloudServer
from tests.support.cloud_factories import CloudFactory, Reviewer
from tests.support.ui_pages import log_in as log_in_page
from tests.support.ui_pages import open_labeler, showing

if TYPE_CHECKING:  # imported by name, pytest would try to collect it as a test class
    pass


def browser_client(cloud: CloudServer) -> httpx.Client:
    return httpx.Client(base_url=cloud.url, timeout=30, follow_redirects=False)


def log_in(http: httpx.Client, who: Reviewer) -> httpx.Response:
    return http.post("/login", data={"username": who.username, "password": who.password})


# -- sessions -----------------------------------------------------------------------------------------------


def test_pages_without_a_session_redirect_to_login(cloud: CloudServer, factory: CloudFactory) -> None:
    detector_id = factory.detector()
    with browser_client(cloud) as http:
        for path in (
            "/ui/queues",
            f"/ui/label?detector_id={detector_id}",
            f"/ui/detectors/{detector_id}",
            "/ui/stats",
        ):
            resp = http.get(path)
            # The login page is told where the person was going, and leads back there.
            assert resp.status_code == 303, path
            assert resp.headers["location"] == "/login?" + urlencode({"next": path}), path
        http.cookies.set("io_session", "not-a-session")
        assert http.get("/ui/queues").status_code == 303
        form = http.get("/login")
        assert form.status_code == 200 and 'name="password"' in form.text and 'name="next"' not in form.text


def test_logging_in_leads_back_to_the_page_asked_for_and_only_to_our_pages(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector()
    who = factory.reviewer()
    wanted = f"/ui/label?detector_id={detector_id}"
    with browser_client(cloud) as http:
        form = http.get("/login", params={"next": wanted})
        assert f'name="next" value="{html.escape(wanted)}"' in form.text
        # A wrong password keeps where to go next.
        again = http.post("/login", data={"username": who.username, "password": "wrong", "next": wanted})
        assert again.status_code == 401 and html.escape(wanted) in again.text
        done = http.post("/login", data={"username": who.username, "password": who.password, "next": wanted})
        assert done.status_code == 303 and done.headers["location"] == wanted
    for elsewhere in (
        "//evil.example/ui/x",
        "https://evil.example/",
        "/ui//evil.example",
        "/login",
        "/api/v1/audit",
        "/ui\\evil",
        "",
    ):
        with browser_client(cloud) as http:
            assert 'name="next"' not in http.get("/login", params={"next": elsewhere}).text, elsewhere
            resp = http.post(
                "/login", data={"username": who.username, "password": who.password, "next": elsewhere}
            )
            assert resp.status_code == 303 and resp.headers["location"] == "/ui/queues", elsewhere


def test_wrong_password_is_a_401_page_and_sets_no_cookie(cloud: CloudServer, factory: CloudFactory) -> None:
    who = factory.reviewer()
    with browser_client(cloud) as http:
        resp = http.post("/login", data={"username": who.username, "password": "wrong"})
        assert resp.status_code == 401 and "Wrong username or password" in resp.text
        assert "io_session" not in resp.cookies
        assert http.post("/login", data={"username": "nobody-here", "password": "x"}).status_code == 401
        assert http.post("/login", data={}).status_code == 401


def test_login_sets_an_httponly_session_and_logout_ends_it(cloud: CloudServer, factory: CloudFactory) -> None:
    who = factory.reviewer()
    with browser_client(cloud) as http:
        resp = log_in(http, who)
        assert resp.status_code == 303 and resp.headers["location"] == "/ui/queues"
        cookie = resp.headers["set-cookie"].lower()
        assert cookie.startswith("io_session=") and "httponly" in cookie and "samesite=lax" in cookie
        page = http.get("/ui/queues")
        assert page.status_code == 200 and who.username in page.text
        # The session works for the review API too, as the labeling page uses it.
        assert http.get("/api/v1/review/queues").status_code == 200
        out = http.post("/logout")
        assert out.status_code == 303 and out.headers["location"] == "/login"
        stale = dict(resp.cookies)
        with browser_client(cloud) as other:
            other.cookies.update(stale)
            assert other.get("/ui/queues").status_code == 303
            assert other.get("/api/v1/review/queues").status_code == 401


def test_a_reviewer_session_cannot_reach_admin_routes(cloud: CloudServer, factory: CloudFactory) -> None:
    with browser_client(cloud) as http:
        assert log_in(http, factory.reviewer()).status_code == 303
        assert http.get("/api/v1/admin/users").status_code == 403


# -- pages --------------------------------------------------------------------------------------------------


def test_a_bad_page_address_is_a_page_and_the_api_keeps_its_json(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    with browser_client(cloud) as http:
        assert log_in(http, factory.reviewer()).status_code == 303
        missing = http.get("/ui/no-such-page")
        assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
        assert "Not found" in missing.text and "/ui/queues" in missing.text
        bad = http.get("/ui/stats", params={"window_s": "soon"})
        assert bad.status_code == 400 and bad.headers["content-type"].startswith("text/html")
        assert "window_s" in bad.text and "Traceback" not in bad.text
        # Without a session too: a page, and nothing about the app beyond it.
        with browser_client(cloud) as anonymous:
            assert anonymous.get("/ui/no-such-page").status_code == 404
        api = http.get("/api/v1/no-such-route")
        assert api.status_code == 404 and api.json() == {"detail": "Not Found"}
        # Every page names its icon, which is served.
        page = http.get("/ui/queues")
        assert '<link rel="icon" href="/static/favicon.svg"' in page.text
        with browser_client(cloud) as anonymous:
            legacy = anonymous.get("/favicon.ico")
            assert legacy.status_code == 308 and legacy.headers["location"] == "/static/favicon.svg"
        icon = http.get("/static/favicon.svg")
        assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")


def test_queues_detector_and_stats_pages_show_the_numbers(cloud: CloudServer, factory: CloudFactory) -> None:
    name = f"loading-dock-{datetime.now(UTC):%H%M%S%f}"
    detector_id = factory.detector(name=name, query="Is the dock door open?")
    factory.review_items(detector_id, 3)
    factory.model_version(detector_id, "v7", "production", {"accuracy": 0.931, "ece": 0.021, "per_class": {}})
    who = factory.reviewer()
    with browser_client(cloud) as http:
        assert log_in(http, who).status_code == 303
        queues = http.get("/ui/queues").text
        assert name in queues and "Is the dock door open?" in queues
        assert f"/ui/label?detector_id={detector_id}" in queues
        with cloud.client(token=who.token) as api:
            held = api.post("/api/v1/review/claim", params={"detector_id": detector_id}).json()
            assert (
                api.post(f"/api/v1/review/items/{held['id']}/answer", json={"label": "YES"}).status_code
                == 200
            )
        detector = http.get(f"/ui/detectors/{detector_id}")
        assert detector.status_code == 200
        page = detector.text
        assert "v7" in page and "production" in page and "accuracy <b>0.931</b>" in page
        assert "Label (2 pending)" in page
        assert '<td>YES</td><td class="num">1</td>' in page.replace("\n", "").replace("  ", "")
        stats = http.get("/ui/stats")
        assert stats.status_code == 200 and who.username in stats.text
        assert http.get("/ui/detectors/det_doesnotexist").status_code == 404
        label = http.get(f"/ui/label?detector_id={detector_id}")
        assert label.status_code == 200 and f'data-detector-id="{detector_id}"' in label.text
        assert http.get("/static/label.js").status_code == 200
        assert http.get("/static/style.css").headers["content-type"].startswith("text/css")


# -- the labeling page in a browser --------------------------------------------------------------------------


@pytest.mark.slow
def test_reviewer_labels_ten_items_with_the_keyboard_and_undoes_one(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector(query="Is the bin full?", name=f"bins-{datetime.now(UTC):%H%M%S%f}")
    now = datetime.now(UTC)
    edge = {
        "result_type": "binary_classification",
        "label": "NO",
        "confidence": 0.62,
        "source": "ALGORITHM",
        "from_edge": True,
    }
    items = factory.review_items(
        detector_id,
        12,
        deadlines=[now + timedelta(minutes=5, seconds=i) for i in range(12)],
        result=edge,
        diagnostics={"in_domain_score": 0.87, "out_of_domain": False},
        with_images=True,
    )
    order = [ref.item_id for ref in items]
    who = factory.reviewer()
    keys = ["y", "n", "y", "y", "n", "u", "y", "n", "n", "y"]
    expected_label = {"y": "YES", "n": "NO", "u": "UNCLEAR"}

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{cloud.url}/ui/label?detector_id={detector_id}")
        assert "/login?next=" in page.url
        page.fill("input[name=username]", who.username)
        page.fill("input[name=password]", who.password)
        page.keyboard.press("Enter")
        # Logging in leads back to the labeling page the bookmark asked for.
        page.wait_for_url(f"**/ui/label?detector_id={detector_id}")
        labeler = page.locator("#labeler")

        showing(page, order[0])
        # What the reviewer sees: the question, the model's guess, its confidence, the OOD score, the keys.
        assert page.inner_text("#question") == "Is the bin full?"
        assert page.inner_text("#prediction").startswith("NO")
        assert page.inner_text("#confidence") == "62.0 %"
        assert "0.87" in page.inner_text("#ood") and "in domain" in page.inner_text("#ood")
        assert page.inner_text("#deadline").startswith("in ")
        assert [b.inner_text().split() for b in page.locator("#answers button").all()] == [
            ["Y", "YES"],
            ["N", "NO"],
            ["U", "UNCLEAR"],
        ]
        assert page.evaluate("document.getElementById('image').naturalWidth") > 0
        page.screenshot(path=str(artifact("review-label-page.png")), full_page=True)

        for i, key in enumerate(keys):
            showing(page, order[i])
            page.keyboard.press(key)
        showing(page, order[10])
        assert page.inner_text("#count") == "10"

        # Undo takes back the tenth answer and shows that item again; answer it differently.
        page.keyboard.press("z")
        showing(page, order[9])
        assert "Undid YES" in page.inner_text("#status")
        page.keyboard.press("n")
        showing(page, order[10])
        # Skip the eleventh: the twelfth comes next.
        page.keyboard.press("s")
        showing(page, order[11])
        assert labeler.get_attribute("data-state") == "ready"
        page.close()

    labels = factory.labels(detector_id)
    standing = {label["review_item_id"]: label["label"] for label in labels if label["undone_at"] is None}
    want = {order[i]: expected_label[key] for i, key in enumerate(keys)}
    want[order[9]] = "NO"
    assert standing == want
    assert [
        (label["review_item_id"], label["label"]) for label in labels if label["undone_at"] is not None
    ] == [(order[9], "YES")]
    assert all(label["user_id"] == who.user_id and label["source"] == "HUMAN" for label in labels)
    assert len(labels) == 11
    assert factory.skips(who.user_id) == {order[10]}
    rows = factory.items(detector_id)
    assert rows[order[10]]["status"] == "pending" and rows[order[10]]["lease_owner"] is None
    assert artifact("review-label-page.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_skipped_item_is_listed_and_can_be_taken_back_from_the_page(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector(name=f"skip-ui-{datetime.now(UTC):%H%M%S%f}")
    now = datetime.now(UTC)
    order = [
        ref.item_id
        for ref in factory.review_items(
            detector_id,
            2,
            deadlines=[now + timedelta(minutes=5, seconds=i) for i in range(2)],
            with_images=True,
        )
    ]
    who = factory.reviewer()
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        open_labeler(page, cloud.url, who, detector_id)

        showing(page, order[0])
        assert not page.locator("#skipped").is_visible()
        page.keyboard.press("s")
        showing(page, order[1])
        expect(page.locator("#skipped-count")).to_have_text("1")
        page.click("#skipped summary")
        page.click(f'#skipped-list button[data-item-id="{order[0]}"]')
        expect(page.locator("#status")).to_have_text(f"Item {order[0]} is back in your queue.")
        expect(page.locator("#skipped")).to_be_hidden()
        page.keyboard.press("y")
        showing(page, order[0])  # offered again after the skip was taken back
        page.keyboard.press("n")
        page.wait_for_selector('#labeler[data-state="empty"]', timeout=15_000)
        page.close()
    assert factory.skips(who.user_id) == set()
    standing = {label["review_item_id"]: label["label"] for label in factory.labels(detector_id)}
    assert standing == {order[1]: "YES", order[0]: "NO"}


@pytest.mark.slow
def test_a_recent_answer_is_reopened_and_changed_from_the_strip(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector(name=f"recent-{datetime.now(UTC):%H%M%S%f}")
    now = datetime.now(UTC)
    order = [
        ref.item_id
        for ref in factory.review_items(
            detector_id,
            4,
            deadlines=[now + timedelta(minutes=5, seconds=i) for i in range(4)],
            with_images=True,
        )
    ]
    who = factory.reviewer()
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        open_labeler(page, cloud.url, who, detector_id)

        for item_id, key in zip(order[:3], ["y", "n", "y"], strict=True):
            showing(page, item_id)
            page.keyboard.press(key)
        showing(page, order[3])
        strip = page.locator("#recent-list li")
        expect(strip).to_have_count(3)
        assert strip.first.inner_text().startswith("YES") and f"item {order[2]}" in strip.first.inner_text()
        # Change the first answer: it is shown again (the current item goes back to the queue).
        page.click(f'#recent-list button[data-item-id="{order[0]}"]')
        showing(page, order[0])
        expect(page.locator("#status")).to_contain_text(f"Took back YES: answer item {order[0]} again.")
        expect(strip).to_have_count(2)
        page.keyboard.press("n")
        showing(page, order[3])
        expect(strip).to_have_count(3)
        page.close()
    labels = factory.labels(detector_id)
    standing = {label["review_item_id"]: label["label"] for label in labels if label["undone_at"] is None}
    assert standing == {order[0]: "NO", order[1]: "NO", order[2]: "YES"}
    assert [
        (label["review_item_id"], label["label"]) for label in labels if label["undone_at"] is not None
    ] == [(order[0], "YES")]


@pytest.mark.slow
def test_a_detector_is_left_out_of_label_all_from_the_queues_page(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    detector_id = factory.detector(name=f"leave-out-{datetime.now(UTC):%H%M%S%f}")
    factory.review_items(detector_id, 1)
    who = factory.reviewer()
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        log_in_page(page, cloud.url, who)
        box = page.locator(f'tr[data-detector-id="{detector_id}"] input.label-all')
        expect(box).to_be_checked()
        box.uncheck()
        expect(page.locator("#queues-status")).to_have_text("Left out of Label all queues.")
        page.reload()
        expect(page.locator(f'tr[data-detector-id="{detector_id}"] input.label-all')).not_to_be_checked()
        page.close()
    with cloud.client(token=who.token) as http:
        queues = {q["detector_id"]: q for q in http.get("/api/v1/review/queues").json()}
    assert queues[detector_id]["in_label_all"] is False


def test_queues_with_most_waiting_come_first_and_empty_ones_last(
    cloud: CloudServer, factory: CloudFactory
) -> None:
    stamp = f"{datetime.now(UTC):%H%M%S%f}"
    # Names in the opposite order to what is waiting, so that a sort by name would fail.
    busy, some, idle = (
        factory.detector(name=f"c-{stamp}"),
        factory.detector(name=f"b-{stamp}"),
        factory.detector(name=f"a-{stamp}"),
    )
    factory.review_items(busy, 3)
    factory.review_items(some, 1)
    who = factory.reviewer()
    with browser_client(cloud) as http:
        assert log_in(http, who).status_code == 303
        page = http.get("/ui/queues").text
    at = {d: page.index(f'data-detector-id="{d}"') for d in (busy, some, idle)}
    assert at[busy] < at[some] < at[idle]
    assert f'<tr data-detector-id="{idle}" class="empty-queue">' in page


def test_compare_with_fewer_than_two_versions_says_so(cloud: CloudServer, factory: CloudFactory) -> None:
    detector_id = factory.detector(name=f"lonely-{datetime.now(UTC):%H%M%S%f}")
    with browser_client(cloud) as http:
        assert log_in(http, factory.reviewer()).status_code == 303
        none = http.get(f"/ui/detectors/{detector_id}/compare")
        assert none.status_code == 200 and "Nothing to compare yet" in none.text
        assert "no model version yet" in none.text and f"/ui/detectors/{detector_id}/training" in none.text
        factory.model_version(detector_id, "v1", "production", current=True)
        one = http.get(f"/ui/detectors/{detector_id}/compare")
        assert one.status_code == 200 and "one model version so far" in one.text
        factory.model_version(detector_id, "v2")
        two = http.get(f"/ui/detectors/{detector_id}/compare")
        assert (
            two.status_code == 200
            and "Nothing to compare yet" not in two.text
            and 'id="compare-metrics"' in two.text
        )
