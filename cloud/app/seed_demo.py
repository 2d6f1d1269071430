"""Register the demo detectors in the cloud: `python -m cloud.app.seed_demo --model-root DIR`.

`make run` calls this once the demo bundles exist (training/demo_bundles.py), so the queries the
edge escalates for them have a detector in the cloud and reach the review queue. Each detector is
created with its fixed id, and its query, mode and labels from the bundle's predictor_metadata.json,
directly in the database (the device API would choose a new id). Its bundle is then uploaded to the
model registry through `POST /api/v1/detectors/{id}/models`, with a short-lived admin token, and made
the production version when the detector has none yet; a split bundle's backbone (from the model
root's backbones/) is registered first with `PUT /api/v1/backbones/{sha256}`. Idempotent: what
already exists is left as it is (a version promoted since stays in production).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from cloud.app.core.detectors import mode_spec
from cloud.app.core.users import issue_token, revoke_token
from cloud.app.db.engine import make_engine, make_sessionmaker
from cloud.app.db.models import Detector, ModelVersion, Role, User
from cloud.app.settings import CloudSettings
from common.backbone import BackboneStore
from common.bundle import DetectorMode, PredictorMetadata, current_bundle_dir, read_metadata
from common.bundle_archive import ARCHIVE_CONTENT_TYPE, pack_bundle

log = logging.getLogger("cloud.seed_demo")

# training.demo_bundles.DEMO_DIGIT_ID and DEMO_SEVEN_ID, repeated so that the cloud needs no torch
# (a test checks that they agree).
DEMO_DIGIT_ID = "det_DemoWhichDigit0000000000000"
DEMO_SEVEN_ID = "det_DemoIsThisASeven00000000000"
DEMO_DETECTOR_IDS = (DEMO_DIGIT_ID, DEMO_SEVEN_ID)
UPLOAD_TIMEOUT_S = 120.0

Say = Callable[[str], None]


class SeedError(RuntimeError):
    """The demo detectors could not be registered (the message says why)."""


@dataclass(frozen=True)
class Seeded:
    detector_id: str
    detector_created: bool
    model: str  # "uploaded", "already registered", "no registry"


def _mode_configuration(meta: PredictorMetadata) -> dict[str, object] | None:
    if meta.mode is DetectorMode.MULTI_CLASS:
        return {"class_names": list(meta.labels)}
    # A detection head names what it finds; older COUNT bundles go by the detector's name.
    class_name = meta.detection.class_name if meta.detection is not None else meta.detector_name or "object"
    if meta.mode is DetectorMode.COUNT:
        return {"class_name": class_name, "max_count": len(meta.labels) - 1}
    if meta.mode is DetectorMode.BOUNDING_BOX:  # its bundle labels are the count buckets 0..max
        return {"class_name": class_name, "max_num_bboxes": len(meta.labels) - 1}
    return None


async def ensure_detector(session: AsyncSession, meta: PredictorMetadata) -> tuple[Detector, bool]:
    """The detector of this bundle, created with the bundle's id when missing; (row, created)."""
    row = await session.get(Detector, meta.detector_id)
    if row is not None:
        return row, False
    taken = (await session.execute(select(Detector.id).where(Detector.name == meta.detector_name))).scalar()
    if taken is not None:
        raise SeedError(
            f"a detector named {meta.detector_name!r} already exists with another id ({taken}); "
            f"rename or delete it to register {meta.detector_id}"
        )
    mode, mode_configuration, labels = mode_spec(meta.mode.value, _mode_configuration(meta))
    row = Detector(
        id=meta.detector_id,
        name=meta.detector_name or meta.detector_id,
        query=meta.query or meta.detector_name or meta.detector_id,
        group_name="demo",
        mode=mode.value,
        mode_configuration=mode_configuration,
        labels=labels,
        confidence_threshold=meta.default_confidence_threshold,
        patience_time=30.0,
        metadata_={"demo": True},
        status="ON",
    )
    session.add(row)
    await session.commit()
    return row, True


async def _version_registered(session: AsyncSession, detector_id: str, version: str) -> bool:
    found = await session.execute(
        select(ModelVersion.id).where(
            ModelVersion.detector_id == detector_id, ModelVersion.version == version
        )
    )
    return found.scalar() is not None


async def _admin_id(session: AsyncSession) -> str:
    admin = (
        await session.execute(
            select(User.id)
            .where(User.role == Role.ADMIN.value, User.is_active)
            .order_by(User.created_at)
            .limit(1)
        )
    ).scalar()
    if admin is None:
        raise SeedError("the cloud has no active admin to upload the demo bundles as")
    return str(admin)


async def _upload(
    sessions: async_sessionmaker[AsyncSession],
    cloud_url: str,
    bundle_dir: Path,
    detector_id: str,
    promote: bool,
) -> bool:
    """Upload one bundle; False when the cloud has no model registry."""
    async with sessions() as session:
        token_row, _, token = await issue_token(session, await _admin_id(session), "demo bundle upload")
    try:
        with tempfile.TemporaryDirectory(prefix="seed-demo-") as tmp:
            archive = Path(tmp) / "bundle.tar.gz"
            await asyncio.to_thread(pack_bundle, bundle_dir, archive)
            async with httpx.AsyncClient(
                base_url=cloud_url, timeout=UPLOAD_TIMEOUT_S, trust_env=False
            ) as http:
                await _upload_backbone(http, token, bundle_dir)
                with archive.open("rb") as data:
                    resp = await http.post(
                        f"/api/v1/detectors/{detector_id}/models",
                        headers={"x-api-token": token},
                        files={"bundle": ("bundle.tar.gz", data, ARCHIVE_CONTENT_TYPE)},
                        data={"promote": "true" if promote else "false"},
                    )
    except httpx.HTTPError as exc:
        raise SeedError(f"cannot reach the cloud at {cloud_url}: {exc}") from exc
    finally:
        async with sessions() as session:
            await revoke_token(session, token_row.id)
    if resp.status_code in (404, 405) and "not found" in resp.text.lower() and "detector" not in resp.text:
        return False
    if resp.status_code not in (200, 201):
        raise SeedError(
            f"the registry refused the bundle of {detector_id}: {resp.status_code} {resp.text[:300]}"
        )
    return True


async def _upload_backbone(http: httpx.AsyncClient, token: str, bundle_dir: Path) -> None:
    """A split bundle's backbone, from <model_root>/backbones, registered before the bundle."""
    ref = (await asyncio.to_thread(read_metadata, bundle_dir)).backbone
    if ref is None:
        return
    resolved = await asyncio.to_thread(bundle_dir.resolve)
    store = BackboneStore.for_model_root(resolved.parent.parent)
    path = await asyncio.to_thread(store.verify, ref.sha256)
    data = await asyncio.to_thread(path.read_bytes)
    resp = await http.put(
        f"/api/v1/backbones/{ref.sha256}",
        headers={"x-api-token": token},
        data={"ref": ref.model_dump_json()},
        files={"file": ("backbone.onnx", data, "application/octet-stream")},
    )
    if resp.status_code not in (200, 201):
        raise SeedError(
            f"the registry refused backbone {ref.sha256[:12]}: {resp.status_code} {resp.text[:300]}"
        )


async def seed_demo_detectors(
    settings: CloudSettings, model_root: Path, cloud_url: str | None, say: Say = print
) -> list[Seeded]:
    """Register each demo detector whose bundle is under `model_root`; upload bundles when `cloud_url`."""
    engine = make_engine(settings.async_database_url, pool_size=1)
    sessions = make_sessionmaker(engine)
    seeded: list[Seeded] = []
    try:
        for detector_id in DEMO_DETECTOR_IDS:
            bundle_dir = current_bundle_dir(model_root, detector_id)
            if bundle_dir is None:
                say(f"{detector_id}: no bundle under {model_root}; not registered")
                continue
            meta = await asyncio.to_thread(read_metadata, bundle_dir)
            async with sessions() as session:
                detector, created = await ensure_detector(session, meta)
                registered = await _version_registered(session, detector_id, meta.version)
                promote = detector.production_version_id is None
            model = "already registered"
            if not registered and cloud_url:
                uploaded = await _upload(sessions, cloud_url, bundle_dir, detector_id, promote)
                model = (f"uploaded{' as production' if promote else ''}") if uploaded else "no registry"
            elif not registered:
                model = "not uploaded (no cloud URL)"
            say(
                f"{detector_id} ({meta.detector_name}): "
                f"{'created' if created else 'already registered'}; model {meta.version}: {model}"
            )
            seeded.append(Seeded(detector_id, created, model))
    finally:
        await engine.dispose()
    return seeded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model-root", type=Path, required=True, help="where the demo bundles are")
    parser.add_argument(
        "--cloud-url",
        help="the running cloud API the bundles are uploaded to (default: CLOUD_PUBLIC_URL)",
    )
    parser.add_argument("--no-upload", action="store_true", help="register the detectors only")
    args = parser.parse_args(argv)
    settings = CloudSettings()
    cloud_url = None if args.no_upload else (args.cloud_url or settings.public_url)
    try:
        asyncio.run(seed_demo_detectors(settings, args.model_root, cloud_url, lambda m: print(m, flush=True)))
    except SeedError as exc:
        print(f"cannot register the demo detectors: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
