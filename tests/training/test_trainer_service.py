"""The training service end to end: a real cloud, a real worker building the dataset exports and real
trainer processes. Jobs are queued through the API; trainers lease them, train small detectors for a
few seconds, register candidates with reports and lineage, promote by the rule, and hand jobs over
when they die, get cancelled or lack the credentials."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from common.bundle import verify_bundle
from common.bundle_archive import install_bundle_archive, sha256_of
from common.imaging import ImageLimits
from common.runtime import ModelRuntime
from tests.support import cloud as support
from tests.support.browser import artifact, chromium
from tests.support.cloud import ADMIN_PASSWORD, DEVICE_TOKEN, CloudServer
from tests.support.cloud_factories_registry import run_in_db, token_for
from tests.support.cloud_factories_worker import eventually, private_database
from tests.support.trainer import LabelledDetector, Trainer, job, labelled_detector, start_worker

pytestmark = pytest.mark.slow

# Small and quick: two epochs of a compact CNN on ~170 training images take a few seconds on a CPU.
# The compact-CNN engine: these tests follow epochs (progress, cancel, a trainer killed mid-job);
# tests/training/test_trainer_service_head.py covers the head engine on the shared backbone.
QUICK = {"engine": "cnn", "epochs": 2, "patience": None, "min_test_items": 10, "seed": 0}
JOB_TIMEOUT_S = 180.0
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cloud_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[support.TestDatabase]:
    yield from private_database(tmp_path_factory)


@pytest.fixture(scope="module")
def cloud(cloud_db: support.TestDatabase, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudServer]:
    server = CloudServer(cloud_db.url, tmp_path_factory.mktemp("cloud")).start()
    worker = start_worker(server)
    yield server
    worker.stop()
    server.stop()


@pytest.fixture(scope="module")
def trainer_token(cloud: CloudServer) -> str:
    """The first start created the `trainer` service account and wrote its token into the data dir."""
    return (cloud.data_dir / "trainer-token").read_text().strip()


@pytest.fixture(scope="module")
def admin(cloud: CloudServer) -> Iterator[httpx.Client]:
    token = run_in_db(cloud.database_url, lambda s: token_for(s, "admin"))
    with cloud.client(token) as http:
        yield http


def create_job(admin: httpx.Client, detector_id: str, config: dict[str, Any]) -> str:
    response = admin.post("/api/v1/training-jobs", json={"detector_id": detector_id, "config": config})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def job_when(
    admin: httpx.Client, job_id: str, ready: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any]:
    """The job, polled until `ready(job)` holds."""

    def probe() -> dict[str, Any] | None:
        current = job(admin, job_id)
        return current if ready(current) else None

    return eventually(probe, timeout=timeout)


def wait_for(
    admin: httpx.Client, job_id: str, *statuses: str, timeout: float = JOB_TIMEOUT_S
) -> dict[str, Any]:
    return job_when(admin, job_id, lambda j: j["status"] in statuses, timeout)


def leased_by(logs: str) -> list[str]:
    return [
        line.split("leased by ", 1)[1].strip() for line in logs.splitlines() if "[cloud] leased by " in line
    ]


def trainers(cloud: CloudServer, token: str, tmp: Path, n: int, **kwargs: Any) -> list[Trainer]:
    return [Trainer(cloud, token, tmp / f"work-{i}", **kwargs) for i in range(n)]


# --- one job, two trainers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FirstRun:
    detector: LabelledDetector
    job: dict[str, Any]
    logs: str
    outputs: dict[str, str]


@pytest.fixture(scope="module")
def first_run(
    cloud: CloudServer, admin: httpx.Client, trainer_token: str, tmp_path_factory: pytest.TempPathFactory
) -> FirstRun:
    """Two trainers running, one job for a detector that has no model yet."""
    detector = labelled_detector(cloud)
    pair = trainers(cloud, trainer_token, tmp_path_factory.mktemp("first"), 2)
    for trainer in pair:
        trainer.start()
    try:
        job_id = create_job(admin, detector.id, QUICK)
        done = wait_for(admin, job_id, "succeeded", "failed", "cancelled")
    finally:
        for trainer in pair:
            trainer.stop()
    logs = admin.get(f"/api/v1/training-jobs/{job_id}/logs").text
    assert done["status"] == "succeeded", f"{done['error']}\n{logs}\n" + "\n".join(t.output() for t in pair)
    return FirstRun(detector, done, logs, {t.owner: t.output() for t in pair})


def test_exactly_one_of_two_trainers_leases_the_job(first_run: FirstRun) -> None:
    owners = leased_by(first_run.logs)
    assert len(owners) == 1 and owners[0] in first_run.outputs
    assert first_run.job["lease_owner"] == owners[0]
    idle = [owner for owner, output in first_run.outputs.items() if owner != owners[0]]
    assert idle and '"msg": "job leased"' not in first_run.outputs[idle[0]]
    assert '"msg": "job leased"' in first_run.outputs[owners[0]]
    assert "Traceback" not in "".join(first_run.outputs.values())


def test_the_first_version_is_registered_with_lineage_and_promoted(
    first_run: FirstRun, admin: httpx.Client
) -> None:
    model_id = first_run.job["result_version_id"]
    model = admin.get(f"/api/v1/models/{model_id}").json()
    assert model["detector_id"] == first_run.detector.id
    # No production version before: the rule promotes a first version that beats chance.
    assert model["status"] == "production" and model["is_production"]
    assert model["metrics"]["promotion"]["promote"] is True
    lineage = model["lineage"]
    assert lineage["training_job_id"] == first_run.job["id"]
    assert lineage["trainer"] == first_run.job["lease_owner"]
    assert lineage["export_id"].startswith("exp_")
    assert lineage["parent_version"] is None
    assert lineage["label_snapshot"]["count"] == len(first_run.detector.images)
    assert lineage["code_version"] and lineage["training_config"]["epochs"] == QUICK["epochs"]
    fetch = admin.get(f"/edge-api/v1/fetch-model-urls/{first_run.detector.id}/").json()
    assert fetch["model_version_id"] == model_id


def test_progress_holds_the_epoch_history_and_the_log_tells_the_stages(first_run: FirstRun) -> None:
    progress = first_run.job["progress"]
    assert progress["stage"] == "done" and progress["promoted"] is True
    assert progress["epochs"] == QUICK["epochs"]
    history = progress["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(0 <= h["train_accuracy"] <= 1 and h["val_loss"] >= 0 for h in history)
    for stage in ("[export]", "[download]", "[train] epoch 2/2", "[register]", "[promote]", "[done]"):
        assert stage in first_run.logs, stage
    assert "Traceback" not in first_run.logs


def test_the_reports_are_stored_with_the_version(first_run: FirstRun, admin: httpx.Client) -> None:
    model_id = first_run.job["result_version_id"]
    listed = admin.get(f"/api/v1/models/{model_id}/reports").json()
    assert [r["name"] for r in listed["reports"]] == [
        "learning_curves.png",
        "confusion_matrix.png",
        "reliability.png",
        "metrics.json",
    ]
    for name in ("learning_curves.png", "confusion_matrix.png", "reliability.png"):
        response = admin.get(f"/api/v1/models/{model_id}/reports/{name}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/png"
        assert response.content.startswith(PNG_SIGNATURE)
    metrics = admin.get(f"/api/v1/models/{model_id}/reports/metrics.json").json()
    assert metrics["training_job_id"] == first_run.job["id"]
    assert metrics["summary"]["promote"] is True and "bundle" not in metrics["summary"]


def test_the_registered_bundle_is_accepted_by_the_edge_runtime(
    first_run: FirstRun, admin: httpx.Client, tmp_path: Path
) -> None:
    model_id = first_run.job["result_version_id"]
    response = admin.get(f"/api/v1/models/{model_id}/download")
    assert response.status_code == 200
    archive = tmp_path / "bundle.tar.gz"
    archive.write_bytes(response.content)
    assert sha256_of(archive) == response.headers["x-content-sha256"]
    installed = install_bundle_archive(archive, tmp_path / "models")
    verify_bundle(installed)
    runtime = ModelRuntime(installed)
    runtime.warmup()
    answers = [runtime.predict(data, ImageLimits()) for data, _ in first_run.detector.images[:40]]
    truth = [label for _, label in first_run.detector.images[:40]]
    assert all(a.label in ("YES", "NO") for a in answers)
    assert sum(a.label == t for a, t in zip(answers, truth, strict=True)) >= 34


def test_a_second_job_is_evaluated_against_production_and_names_it_as_parent(
    first_run: FirstRun, cloud: CloudServer, admin: httpx.Client, trainer_token: str, tmp_path: Path
) -> None:
    first = admin.get(f"/api/v1/models/{first_run.job['result_version_id']}").json()
    # This trainer reads the token file the cloud's first start wrote, as compose and `make run` set it up.
    with Trainer(cloud, "", tmp_path / "work", token_file=cloud.data_dir / "trainer-token"):
        job_id = create_job(admin, first_run.detector.id, {**QUICK, "seed": 1})
        done = wait_for(admin, job_id, "succeeded", "failed", "cancelled")
    assert done["status"] == "succeeded", done["error"]
    model = admin.get(f"/api/v1/models/{done['result_version_id']}").json()
    assert model["id"] != first["id"]
    assert model["lineage"]["parent_version"] == first["version"]
    assert model["lineage"]["production_model_id"] == first["id"]
    evaluation = model["metrics"]["evaluation"]
    assert evaluation["production"]["model_version"] == first["version"]
    assert evaluation["production"]["items_sha256"] == evaluation["candidate"]["items_sha256"]
    promoted = model["metrics"]["promotion"]["promote"]
    assert model["status"] == ("production" if promoted else "candidate")


# --- a trainer dies -----------------------------------------------------------------------------------


def test_a_trainer_killed_mid_job_loses_its_lease_and_another_finishes_the_job(
    cloud: CloudServer, admin: httpx.Client, trainer_token: str, tmp_path: Path
) -> None:
    detector = labelled_detector(cloud)
    # Both trainers on one machine, sharing the scratch space: the second cleans up after the first.
    work = tmp_path / "work"
    doomed = Trainer(cloud, trainer_token, work, lease_s=3.0, heartbeat_s=0.5).start()
    try:
        job_id = create_job(admin, detector.id, {**QUICK, "epochs": 40})
        running = job_when(
            admin,
            job_id,
            lambda j: j["lease_owner"] == doomed.owner and j["progress"].get("epoch", 0) >= 1,
            JOB_TIMEOUT_S,
        )
        assert running["status"] == "running"
        assert doomed.process is not None
        doomed.process.send_signal(signal.SIGKILL)
        doomed.process.wait(timeout=10)
    finally:
        doomed.stop()
    assert [p.name for p in work.iterdir() if p.name.startswith(job_id)], "the killed trainer left nothing"
    with Trainer(cloud, trainer_token, work) as rescuer:
        done = wait_for(admin, job_id, "succeeded", "failed", "cancelled")
    logs = admin.get(f"/api/v1/training-jobs/{job_id}/logs").text
    assert done["status"] == "succeeded", f"{done['error']}\n{logs}\n{rescuer.output()}"
    assert leased_by(logs) == [doomed.owner, rescuer.owner]
    assert done["lease_owner"] == rescuer.owner
    assert done["progress"]["epoch"] == 40 and len(done["progress"]["history"]) == 40
    model = admin.get(f"/api/v1/models/{done['result_version_id']}").json()
    assert model["lineage"]["trainer"] == rescuer.owner
    assert "removed the scratch space of jobs whose trainer died" in rescuer.output()
    assert not [p for p in work.iterdir() if p.name.startswith("trj_")]


def test_a_stopping_trainer_hands_its_job_back_at_once(
    cloud: CloudServer, admin: httpx.Client, trainer_token: str, tmp_path: Path
) -> None:
    detector = labelled_detector(cloud)
    # A long lease: only the hand-back, not its expiry, can free the job within the test.
    leaving = Trainer(cloud, trainer_token, tmp_path / "work", lease_s=600.0, heartbeat_s=1.0).start()
    try:
        job_id = create_job(admin, detector.id, {**QUICK, "epochs": 300, "input_size": 64})
        job_when(admin, job_id, lambda j: j["progress"].get("epoch", 0) >= 1, JOB_TIMEOUT_S)
        assert leaving.process is not None
        leaving.process.send_signal(signal.SIGTERM)
        assert leaving.process.wait(timeout=60) == 0, leaving.output()
    finally:
        leaving.stop()
    # The worker puts the job whose lease ran out back in the queue; no trainer has it now.
    back = wait_for(admin, job_id, "queued", timeout=30)
    logs = admin.get(f"/api/v1/training-jobs/{job_id}/logs").text
    assert "releasing the job: this trainer is stopping" in logs and "lease expired" in logs
    assert back["lease_owner"] is None
    assert '"msg": "trainer stopped"' in leaving.output() and "Traceback" not in leaving.output()
    assert admin.post(f"/api/v1/training-jobs/{job_id}/cancel").json()["status"] == "cancelled"


# --- cancel ---------------------------------------------------------------------------------------------


def test_cancel_from_the_training_page_stops_the_job_within_an_epoch(
    cloud: CloudServer, admin: httpx.Client, trainer_token: str, tmp_path: Path
) -> None:
    """The admin watches the job live on the detector's training page and cancels it there."""
    detector = labelled_detector(cloud)
    # 64x64 inputs make each epoch long enough that the page and the cancel land mid-training.
    config = {**QUICK, "epochs": 300, "input_size": 64}
    with Trainer(cloud, trainer_token, tmp_path / "work") as trainer, chromium() as browser:
        job_id = create_job(admin, detector.id, config)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(f"{cloud.url}/login")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", ADMIN_PASSWORD)
        page.keyboard.press("Enter")
        page.wait_for_url("**/ui/queues")
        page.goto(f"{cloud.url}/ui/detectors/{detector.id}/training")
        page.wait_for_function(
            "() => /^([2-9]|[1-9][0-9]+) \\/ 300$/.test(document.querySelector('[data-field=epoch]').textContent)",
            timeout=JOB_TIMEOUT_S * 1000,
        )
        assert page.locator("#chart-loss polyline").count() == 2
        expect(page.locator("#chart-loss")).to_have_attribute("data-scale", "log")
        assert page.locator("#chart-accuracy polyline").count() == 2
        assert trainer.owner in page.inner_text("[data-field=trainer]")
        assert "[train] epoch" in page.inner_text("#live-log")
        page.screenshot(path=str(artifact("training-live.png")), full_page=True)
        page.once("dialog", lambda dialog: dialog.accept())  # the page asks before cancelling
        page.click("#cancel-job")
        page.wait_for_function(
            "() => /Cancel requested/.test(document.getElementById('live-status').textContent)"
        )
        at_cancel = job(admin, job_id)
        assert at_cancel["cancel_requested"] is True
        done = wait_for(admin, job_id, "succeeded", "failed", "cancelled")
        # The page notices the end and reloads with the job in its table.
        page.wait_for_selector(f'#jobs tr[data-job-id="{job_id}"] .job-cancelled', timeout=30_000)
        page.close()
    assert done["status"] == "cancelled", done
    epoch_at_cancel = at_cancel["progress"]["epoch"]
    # The epoch running when the cancel arrived ends, and nothing after it: one more epoch at most
    # (plus one for a heartbeat that was in flight when the cancel was read back).
    assert epoch_at_cancel <= done["progress"]["epoch"] <= epoch_at_cancel + 2
    assert done["error"].startswith("cancelled at epoch")
    assert done["result_version_id"] is None
    assert admin.get(f"/api/v1/detectors/{detector.id}/models").json()["results"] == []


# --- credentials ----------------------------------------------------------------------------------------


def test_a_trainer_with_a_device_token_leases_nothing(
    cloud: CloudServer, admin: httpx.Client, tmp_path: Path
) -> None:
    detector = labelled_detector(cloud, n=20)
    with Trainer(cloud, DEVICE_TOKEN, tmp_path / "work") as trainer:
        job_id = create_job(admin, detector.id, QUICK)
        eventually(lambda: "(role device), which may not run training jobs" in trainer.output(), timeout=60)
        assert job(admin, job_id)["status"] == "queued"
        assert trainer.process is not None and trainer.process.is_running()
    assert admin.post(f"/api/v1/training-jobs/{job_id}/cancel").json()["status"] == "cancelled"


# --- reports API and pages --------------------------------------------------------------------------


def test_reports_accept_only_known_names_and_valid_content(first_run: FirstRun, admin: httpx.Client) -> None:
    model_id = first_run.job["result_version_id"]
    url = f"/api/v1/models/{model_id}/reports"
    assert admin.post(f"{url}/notes.txt", content=b"hello").status_code in (400, 404)
    assert admin.post(f"{url}/reliability.png", content=b"GIF89a not a png").status_code == 400
    assert admin.post(f"{url}/metrics.json", content=b"[1, 2]").status_code == 400
    assert admin.post(f"{url}/reliability.png", content=b"").status_code == 400
    big = PNG_SIGNATURE + bytes(6 * 1024 * 1024)
    assert admin.post(f"{url}/reliability.png", content=big).status_code == 413
    assert admin.get("/api/v1/models/mdl_nothing/reports/reliability.png").status_code == 404
    # A valid upload replaces the stored report.
    new = json.dumps({"note": "replaced"}).encode()
    assert admin.post(f"{url}/metrics.json", content=new).status_code == 201
    assert admin.get(f"{url}/metrics.json").json() == {"note": "replaced"}


def test_training_and_compare_pages_show_versions_and_their_plots(
    first_run: FirstRun, cloud: CloudServer, admin: httpx.Client
) -> None:
    detector_id = first_run.detector.id
    with httpx.Client(base_url=cloud.url, timeout=30) as anonymous:
        page = anonymous.get(f"/ui/detectors/{detector_id}/training")
        assert page.status_code == 303 and page.headers["location"].startswith("/login?next=")
        assert anonymous.get(f"/ui/detectors/{detector_id}/training/status").status_code == 401
    versions = admin.get(f"/api/v1/detectors/{detector_id}/models").json()["results"]
    assert len(versions) >= 2
    browser = cloud.login("reviewer", support.REVIEWER_PASSWORD)
    try:
        assert (
            f'href="/ui/detectors/{detector_id}/training"' in browser.get(f"/ui/detectors/{detector_id}").text
        )
        html = browser.get(f"/ui/detectors/{detector_id}/training").text
        for version in versions:
            assert version["version"] in html
            assert f"/api/v1/models/{version['id']}/reports/confusion_matrix.png" in html
        assert first_run.job["id"] in html
        # The images the page shows are served to the reviewer's session.
        image = browser.get(f"/api/v1/models/{versions[0]['id']}/reports/learning_curves.png")
        assert image.status_code == 200 and image.content.startswith(PNG_SIGNATURE)
        status = browser.get(f"/ui/detectors/{detector_id}/training/status").json()
        assert status["active"] is False and status["job"]["status"] == "succeeded"
        a, b = versions[1]["id"], versions[0]["id"]
        compare = browser.get(f"/ui/detectors/{detector_id}/compare", params={"a": a, "b": b})
        assert compare.status_code == 200
        assert versions[0]["version"] in compare.text and versions[1]["version"] in compare.text
        assert 'data-metric="test_accuracy"' in compare.text
        for model_id in (a, b):
            assert f"/api/v1/models/{model_id}/reports/reliability.png" in compare.text
        other = browser.get(f"/ui/detectors/{detector_id}/compare", params={"a": "mdl_elsewhere"})
        assert other.status_code == 404
    finally:
        browser.close()

    # In a browser, the plots load with the reviewer's session.
    loaded = "() => [...document.images].length > 0 && [...document.images].every(i => i.complete && i.naturalWidth > 0)"
    with chromium() as chrome:
        tab = chrome.new_page(viewport={"width": 1280, "height": 900})
        tab.goto(f"{cloud.url}/login")
        tab.fill("input[name=username]", "reviewer")
        tab.fill("input[name=password]", support.REVIEWER_PASSWORD)
        tab.keyboard.press("Enter")
        tab.wait_for_url("**/ui/queues")
        tab.goto(f"{cloud.url}/ui/detectors/{detector_id}/training")
        tab.wait_for_function(loaded)
        assert tab.locator("article.version img").count() == 3 * len(versions)
        assert tab.locator("#cancel-job").count() == 0 and tab.locator("#start-training").count() == 0
        tab.screenshot(path=str(artifact("training-versions.png")), full_page=True)
        tab.select_option("select[name=a]", a)
        tab.select_option("select[name=b]", b)
        tab.click("text=Compare")
        tab.wait_for_url("**/compare?**")
        tab.wait_for_function(loaded)
        assert tab.locator(".side-by-side img").count() == 6
        tab.screenshot(path=str(artifact("training-compare.png")), full_page=True)
        tab.close()


def test_the_trainer_token_file_holds_a_trainer_role_service_account(
    cloud: CloudServer, trainer_token: str
) -> None:
    with cloud.client(trainer_token) as http:
        me = http.get("/device-api/v1/me").json()
        assert http.get("/api/v1/admin/users").status_code == 403
        assert http.get("/api/v1/review/queues").status_code == 403
    assert me["username"] == "trainer" and me["role"] == "trainer" and me["is_superuser"] is False
    assert (cloud.data_dir / "trainer-token").stat().st_mode & 0o077 == 0
