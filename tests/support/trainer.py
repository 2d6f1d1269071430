"""The training service and the cloud worker as real processes, and labelled detectors for them to
train: MNIST zeros and ones behind a BINARY "is this a one?" detector, written straight into the test
database and the cloud's blob store."""

from __future__ import annotations

import io
import secrets
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.blobstore import LocalBlobStore
from cloud.app.db.models import Detector, ImageQuery, Label, LabelSource
from common.ids import new_detector_id, new_image_query_id
from launcher.processes import ManagedProcess
from tests.support.cloud import ROOT, CloudServer
from tests.support.cloud_factories_registry import run_in_db
from tests.support.models import BACKBONE_CACHE
from training.datasets import load_mnist_5k


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def digit_images(n: int, seed: int = 0) -> list[tuple[bytes, str]]:
    """`n` MNIST zeros and ones as (PNG bytes, YES for a one / NO for a zero), in a seeded order."""
    images, labels = load_mnist_5k()
    pool = [i for i in np.random.default_rng(seed).permutation(len(labels)) if labels[i] in (0, 1)]
    return [(_png(images[i]), "YES" if labels[i] == 1 else "NO") for i in pool[:n]]


@dataclass(frozen=True)
class LabelledDetector:
    id: str
    name: str
    images: list[tuple[bytes, str]] = field(repr=False)


def labelled_detector(cloud: CloudServer, n: int = 240) -> LabelledDetector:
    """A BINARY detector with `n` image queries, each with a reviewer's label and its image blob."""
    blobs = LocalBlobStore(cloud.data_dir / "blobs")
    images = digit_images(n)
    detector_id = new_detector_id()
    name = f"is-it-a-one-{secrets.token_hex(4)}"

    async def write(session: AsyncSession) -> None:
        session.add(
            Detector(
                id=detector_id, name=name, query="Is this digit a one?", mode="BINARY", labels=["YES", "NO"]
            )
        )
        await session.flush()
        for data, label in images:
            iq_id = new_image_query_id()
            key = f"images/{detector_id}/{iq_id}.png"
            await blobs.put(key, data, "image/png")
            session.add(
                ImageQuery(
                    id=iq_id,
                    detector_id=detector_id,
                    query="Is this digit a one?",
                    result_type="binary_classification",
                    patience_time=30.0,
                    confidence_threshold=0.9,
                    image_key=key,
                    image_content_type="image/png",
                )
            )
            await session.flush()
            session.add(
                Label(
                    image_query_id=iq_id,
                    detector_id=detector_id,
                    label=label,
                    source=LabelSource.HUMAN.value,
                )
            )
        await session.commit()

    run_in_db(cloud.database_url, write)
    return LabelledDetector(detector_id, name, images)


def start_worker(cloud: CloudServer) -> ManagedProcess:
    """`python -m cloud.worker` on the cloud's database and blobs; it builds exports, and never queues
    a retrain of its own (the tests queue every job they want)."""
    process = ManagedProcess(
        "cloud-worker",
        [sys.executable, "-m", "cloud.worker"],
        env={
            "DATABASE_URL": cloud.database_url,
            "CLOUD_DATA_DIR": str(cloud.data_dir),
            "CLOUD_WORKER_POLL_S": "0.2",
            "CLOUD_RETRAIN_MIN_LABELS": "1000000000",
            "CLOUD_RETRAIN_FIRST_MIN_PER_CLASS": "1000000000",
            "CLOUD_RETRAIN_INTERVAL_S": "1000000000",
            "CLOUD_LOG_LEVEL": "warning",
        },
        cwd=ROOT,
    )
    return process.start()


@dataclass
class Trainer:
    """One `python -m training.service` process."""

    cloud: CloudServer
    token: str
    work_dir: Path
    owner: str = field(default_factory=lambda: f"trainer-test-{secrets.token_hex(4)}")
    lease_s: float = 30.0
    heartbeat_s: float | None = None
    # Read the token from this file (as compose and `make run` do) instead of TRAINER_API_TOKEN.
    token_file: Path | None = None
    process: ManagedProcess | None = None

    def start(self) -> Trainer:
        env = {
            "TRAINER_CLOUD_URL": self.cloud.url,
            "TRAINER_API_TOKEN": "" if self.token_file else self.token,
            "TRAINER_API_TOKEN_FILE": str(self.token_file or ""),
            "TRAINER_OWNER": self.owner,
            "TRAINER_LEASE_S": str(self.lease_s),
            "TRAINER_HEARTBEAT_S": str(self.heartbeat_s or min(2.0, self.lease_s / 4)),
            "TRAINER_POLL_S": "0.2",
            "TRAINER_WORK_DIR": str(self.work_dir),
            # The backbone is exported once per checkout, not once per test.
            "TRAINER_BACKBONE_CACHE": str(BACKBONE_CACHE),
            "TRAINER_DEVICE": "cpu",
            # One thread each: two trainers share a small machine without spin-waiting on each other.
            "TRAINER_THREADS": "1",
            "TRAINER_LOG_LEVEL": "info",
        }
        self.process = ManagedProcess(
            f"trainer-{self.owner}", [sys.executable, "-m", "training.service"], env=env, cwd=ROOT
        )
        self.process.start()
        return self

    def output(self, lines: int = 400) -> str:
        return self.process.output_tail(lines) if self.process is not None else ""

    def stop(self) -> int | None:
        if self.process is None:
            return None
        return self.process.stop(timeout=30)

    def __enter__(self) -> Trainer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def job(http: httpx.Client, job_id: str) -> dict[str, Any]:
    response = http.get(f"/api/v1/training-jobs/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body
