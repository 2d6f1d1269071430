"""The labelled images most like an item under review, in the production model's own embedding space:
a reviewer sees at a glance what the model has been taught about images like this one, and so why it
was unsure (docs/architecture.md §7).

The item's image goes through the production bundle's shared backbone (the cloud's model cache, the
same runtime that answers queries), and is compared by cosine similarity with the embeddings the
trainer stored for that detector's images with the same backbone (cloud.app.core.backbones), among
those with a standing label (latest label, not undone, UNCLEAR left out). Where the backbone reports
its pooled part, only that part is compared: the channel statistics beside it measure texture and
light, not what is in the picture. Nothing is computed when the detector has no split production
bundle or no labelled image has an embedding yet: the answer says which.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.blobstore import BlobNotFoundError, BlobStore
from cloud.app.core.backbones import embeddings_of
from cloud.app.core.detectors import UNCLEAR
from cloud.app.core.model_answers import ProductionModels, UnusableModelError
from cloud.app.core.review_queue import ItemImage, image_of
from cloud.app.db.models import ImageQuery, Label, ReviewItem
from cloud.app.errors import NotFoundError
from cloud.app.schemas.review import Neighbour, NeighboursOut
from common.backbone import BackboneRef
from common.imaging import ImageError, ImageLimits
from common.runtime import ModelRuntime

K = 6


@dataclass(frozen=True)
class _Item:
    image_query_id: str
    detector_id: str
    image_key: str


def neighbour_image_path(image_query_id: str) -> str:
    return f"/api/v1/review/images/{image_query_id}"


async def similar_labelled(
    session: AsyncSession,
    blobs: BlobStore,
    models: ProductionModels,
    limits: ImageLimits,
    item_id: int,
    k: int = K,
) -> NeighboursOut:
    """The item's image from `blobs`, embedded by the production runtime from `models`."""
    item = await _item(session, item_id)

    def unavailable(why: str) -> NeighboursOut:
        return NeighboursOut(item_id=item_id, available=False, why=why, neighbours=[])

    try:
        embedded = await _embed_with_production_model(session, blobs, models, limits, item)
    except UnusableModelError:  # the cache logs load failures; the reviewer only needs to know
        return unavailable("the production model cannot be loaded here")
    if isinstance(embedded, str):
        return unavailable(embedded)
    ref, query = embedded
    stored = await embeddings_of(session, item.detector_id, ref.sha256)
    labels = await _standing_labels(session, item.detector_id)
    await session.commit()
    ids = [iq for iq in stored if iq in labels and iq != item.image_query_id]
    if not ids:
        return unavailable(
            "no labelled image of this detector has an embedding yet (the trainer stores them)"
        )
    vectors = np.stack([_part(stored[iq].astype(np.float32), ref) for iq in ids])
    sims = _unit(vectors) @ _unit(query[None, :])[0]
    order = np.argsort(-sims, kind="stable")[:k]
    return NeighboursOut(
        item_id=item_id,
        available=True,
        backbone=ref.id,
        compared=len(ids),
        neighbours=[
            Neighbour(
                image_query_id=ids[i],
                label=labels[ids[i]],
                similarity=round(float(sims[i]), 4),
                image_url=neighbour_image_path(ids[i]),
            )
            for i in order
        ],
    )


async def _embed_with_production_model(
    session: AsyncSession, blobs: BlobStore, models: ProductionModels, limits: ImageLimits, item: _Item
) -> tuple[BackboneRef, NDArray[np.float32]] | str:
    """The item's embedding by the production runtime (held while it embeds), or why there is none."""
    async with models.use(session, item.detector_id) as runtime:
        if runtime is None:
            return "this detector has no production model yet"
        if runtime.backbone is None:
            return "the production model has no shared backbone to compare images in"
        ref = runtime.backbone.ref
        try:
            image = await blobs.get(item.image_key)
        except (BlobNotFoundError, ValueError):
            return "the item's image is missing"
        try:
            return ref, await asyncio.to_thread(_embed, runtime, ref, image, limits)
        except ImageError:
            return "the item's image does not decode"


async def _item(session: AsyncSession, item_id: int) -> _Item:
    row = (
        await session.execute(
            select(ReviewItem.image_query_id, ReviewItem.detector_id, ImageQuery.image_key)
            .join(ImageQuery, ImageQuery.id == ReviewItem.image_query_id)
            .where(ReviewItem.id == item_id)
        )
    ).first()
    if row is None:
        raise NotFoundError(f"review item {item_id} not found")
    return _Item(row.image_query_id, row.detector_id, row.image_key)


async def _standing_labels(session: AsyncSession, detector_id: str) -> dict[str, str]:
    """image query id -> its latest label that was not undone (UNCLEAR teaches nothing: left out)."""
    latest = (
        select(Label.image_query_id, func.max(Label.id).label("id"))
        .where(Label.detector_id == detector_id, Label.undone_at.is_(None))
        .group_by(Label.image_query_id)
        .subquery()
    )
    rows = await session.execute(
        select(Label.image_query_id, Label.label).join(latest, latest.c.id == Label.id)
    )
    return {iq: label for iq, label in rows if label != UNCLEAR}


def _part(vector: NDArray[np.float32], ref: BackboneRef) -> NDArray[np.float32]:
    pooled = ref.parts.get("pooled")
    if pooled and len(pooled) == 2 and 0 <= pooled[0] < pooled[1] <= vector.shape[-1]:
        return vector[..., pooled[0] : pooled[1]]
    return vector


def _unit(vectors: NDArray[np.float32]) -> NDArray[np.float32]:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit: NDArray[np.float32] = vectors / np.maximum(norms, 1e-12)
    return unit


def _embed(runtime: ModelRuntime, ref: BackboneRef, image: bytes, limits: ImageLimits) -> NDArray[np.float32]:
    """CPU work: decode, preprocess and run the shared backbone (call it in a thread)."""
    assert runtime.backbone is not None
    tensor = runtime.preprocessor.tensor(image, limits)
    out = runtime.backbone.run(tensor, [ref.embedding_output])[ref.embedding_output]
    return _part(np.asarray(out[0], dtype=np.float32), ref)


async def labelled_image(session: AsyncSession, blobs: BlobStore, image_query_id: str) -> ItemImage:
    """A neighbour's image: any image query that has a label (404 otherwise, or when its blob is gone)."""
    row = (
        await session.execute(
            select(ImageQuery.image_key, ImageQuery.image_content_type).where(
                ImageQuery.id == image_query_id,
                select(Label.id).where(Label.image_query_id == ImageQuery.id).exists(),
            )
        )
    ).first()
    await session.commit()
    if row is None:
        raise NotFoundError(f"no labelled image query {image_query_id[:60]}")
    return await image_of(blobs, row.image_key, row.image_content_type)
