"""Zero-drop hot swaps under load.

Real processes throughout: the cloud API (registry) on a fresh database, inference on an empty model
root, edge-api, nginx, and the updater polling the cloud every REFRESH_S. CLIENTS cameras post digits
through nginx without pause while SWAPS versions are promoted on the cloud one after another, each
promoted once the edge serves the one before. Not one request may fail, and every answer names the
version serving before or after the swap under way: an answer to a request that started while
version i was being promoted and ended while version j was names one of versions i-1 .. j.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from common.bundle import current_bundle_dir
from tests.support.updater import UpdaterEdge, bundle_archive, updater_edge, updater_status

DIGIT = "det_DemoWhichDigit0000000000000"
REFRESH_S = 1.0
CLIENTS = 16
SWAPS = 10
VERSIONS = [f"zd-{i}" for i in range(SWAPS + 1)]
INDEX = {version: i for i, version in enumerate(VERSIONS)}


@dataclass
class Answer:
    client: int
    phase_at_start: int
    phase_at_end: int
    status: int
    version: str | None
    detail: str = ""


@dataclass
class Load:
    """The cameras' shared view: which promotion is under way, and the newest version answered."""

    phase: int = 0
    newest: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    answers: list[list[Answer]] = field(default_factory=lambda: [[] for _ in range(CLIENTS)])

    def camera(self, edge: UpdaterEdge, n: int, images: list[bytes]) -> None:
        with edge.camera() as http:
            i = n
            while not self.stop.is_set():
                started = self.phase
                try:
                    response = edge.ask(http, images[i % len(images)])
                    status, body = response.status_code, response.json()
                except Exception as exc:  # a transport error is a failed request too
                    status, body = 0, {"detail": f"{type(exc).__name__}: {exc}"}
                i += 1
                version = ((body.get("intellioptics") or {}) if isinstance(body, dict) else {}).get(
                    "model_version"
                )
                answer = Answer(
                    n, started, self.phase, status, version, "" if status == 200 else str(body)[:300]
                )
                self.answers[n].append(answer)
                if version in INDEX:
                    with self.lock:
                        self.newest = max(self.newest, INDEX[version])


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, demo_models: Path
) -> Iterator[tuple[UpdaterEdge, list[str]]]:
    """The edge, and the registry ids of VERSIONS[1:], registered up front as candidates."""
    bundle = current_bundle_dir(demo_models, DIGIT)
    assert bundle is not None
    archives = tmp_path_factory.mktemp("zero-drop-archives")
    with updater_edge(
        tmp_path_factory.mktemp("zero-drop"), bundle, VERSIONS[0], refresh_rate_s=REFRESH_S
    ) as loop:
        model_ids = [
            loop.registry.upload(DIGIT, bundle_archive(bundle, archives / f"{v}.tar.gz", version=v))
            for v in VERSIONS[1:]
        ]
        yield loop, model_ids


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ten_swaps_under_sixteen_clients_through_nginx_fail_no_request(
    stack: tuple[UpdaterEdge, list[str]], digits
) -> None:
    edge, model_ids = stack
    images = [image for image, _ in digits[:CLIENTS]]
    edge.wait_until_served(VERSIONS[0], images[0])
    load = Load()
    cameras = [threading.Thread(target=load.camera, args=(edge, n, images)) for n in range(CLIENTS)]
    for camera in cameras:
        camera.start()
    try:
        time.sleep(1.0)
        for i, model_id in enumerate(model_ids, start=1):
            load.phase = i
            edge.registry.promote(model_id)
            deadline = time.monotonic() + 60
            while load.newest < i:
                assert time.monotonic() < deadline, (
                    f"{VERSIONS[i]} never served; updater: {updater_status(edge.updater_url)}"
                )
                time.sleep(0.05)
        time.sleep(1.0)
    finally:
        load.stop.set()
        for camera in cameras:
            camera.join(timeout=60)

    answers = [a for per_client in load.answers for a in per_client]
    failed = [a for a in answers if a.status != 200 or a.version not in INDEX]
    assert failed == [], f"{len(failed)} of {len(answers)} requests failed, e.g. {failed[:3]}"
    # Old or new: the version serving when the request started, or one promoted while it ran.
    outside = [
        a for a in answers if not max(0, a.phase_at_start - 1) <= INDEX[a.version or ""] <= a.phase_at_end
    ]
    assert outside == [], outside[:5]
    # A camera never sees a version older than one it was already answered by.
    for per_client in load.answers:
        seen = [INDEX[a.version or ""] for a in per_client]
        assert seen == sorted(seen), f"client {per_client[0].client} went back: {seen}"
    # The load was there through every swap.
    for phase in range(1, SWAPS + 1):
        assert sum(1 for a in answers if a.phase_at_start == phase) >= CLIENTS, phase
    detector = next(d for d in updater_status(edge.updater_url)["detectors"] if d["detector_id"] == DIGIT)
    assert detector["version"] == VERSIONS[-1] and detector["consecutive_failures"] == 0
