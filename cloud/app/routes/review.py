"""The review API: reviewers (API token or browser session) claim items, answer, skip, undo.

Every write answers 409 when the caller does not hold a live lease on the item (another reviewer has
it, the lease ran out, or it is already answered); the page then simply claims the next item.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, status
from starlette.responses import Response

from cloud.app.core import review_neighbours, review_queue, review_stats
from cloud.app.core.image_queries import image_limits
from cloud.app.core.model_answers import ProductionModels
from cloud.app.deps import ReviewerDep, SessionDep, StateDep
from cloud.app.schemas.fields import ID_PATTERN
from cloud.app.schemas.review import (
    AnswerIn,
    AnswerOut,
    ClaimedItem,
    LabelAllIn,
    LeaseOut,
    NeighboursOut,
    QueueSummary,
    ReviewStatsOut,
    SkippedItem,
    UndoOut,
)

router = APIRouter(prefix="/api/v1/review", tags=["review"])

ItemId = Annotated[int, Path(ge=1, le=2**31 - 1)]
DetectorFilter = Annotated[str | None, Query(max_length=40, pattern=ID_PATTERN)]


@router.get("/queues", operation_id="review_list_queues")
async def list_queues(session: SessionDep, reviewer: ReviewerDep) -> list[QueueSummary]:
    return await review_queue.queue_summaries(session, reviewer.user_id)


@router.put(
    "/queues/{detector_id}/label-all", status_code=status.HTTP_204_NO_CONTENT, operation_id="review_label_all"
)
async def label_all(
    detector_id: Annotated[str, Path(max_length=40, pattern=ID_PATTERN)],
    body: LabelAllIn,
    session: SessionDep,
    reviewer: ReviewerDep,
) -> None:
    """Whether "Label all queues" (a claim without `detector_id`) offers you this detector's items."""
    await review_queue.set_excluded(session, reviewer.user_id, detector_id, not body.included)


@router.post(
    "/claim",
    operation_id="review_claim",
    response_model=ClaimedItem,
    responses={204: {"description": "Nothing to claim right now"}},
)
async def claim(
    state: StateDep, session: SessionDep, reviewer: ReviewerDep, detector_id: DetectorFilter = None
) -> ClaimedItem | Response:
    """The next item in queue order (optionally of one detector), leased to you for `lease_s` seconds."""
    item = await review_queue.claim_next(
        session, reviewer.user_id, state.settings.review_lease_s, state.settings.public_url, detector_id
    )
    return item if item is not None else Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/items/{item_id}/claim",
    operation_id="review_reclaim",
    response_model=ClaimedItem,
    responses={409: {"description": "someone else holds it now, or it is answered or skipped"}},
)
async def reclaim(
    item_id: ItemId, state: StateDep, session: SessionDep, reviewer: ReviewerDep
) -> ClaimedItem:
    """This item again, after your lease on it ran out (the page then sends your answer again)."""
    return await review_queue.claim_item(
        session, item_id, reviewer.user_id, state.settings.review_lease_s, state.settings.public_url
    )


@router.post("/items/{item_id}/heartbeat", operation_id="review_heartbeat")
async def heartbeat(item_id: ItemId, state: StateDep, session: SessionDep, reviewer: ReviewerDep) -> LeaseOut:
    return await review_queue.heartbeat(session, item_id, reviewer.user_id, state.settings.review_lease_s)


@router.post("/items/{item_id}/answer", operation_id="review_answer")
async def answer(
    item_id: ItemId,
    body: AnswerIn,
    state: StateDep,
    session: SessionDep,
    reviewer: ReviewerDep,
    claim_next: Annotated[
        bool, Query(alias="next", description="also claim the next item (one round trip, not two)")
    ] = False,
    detector_id: DetectorFilter = None,
) -> AnswerOut:
    """One of the detector's labels or UNCLEAR, with the boxes drawn (if any); stored once, and the
    image query is answered with both. 400 when the boxes do not fit the answer."""
    async with review_queue.one_connection(session):
        out = await review_queue.answer_item(session, item_id, reviewer.user_id, body.label, body.rois)
        if claim_next:
            out.next = await review_queue.claim_next(
                session,
                reviewer.user_id,
                state.settings.review_lease_s,
                state.settings.public_url,
                detector_id,
            )
    return out


@router.post("/items/{item_id}/skip", status_code=status.HTTP_204_NO_CONTENT, operation_id="review_skip")
async def skip(item_id: ItemId, session: SessionDep, reviewer: ReviewerDep) -> None:
    """Back to the queue; you will not be offered this item again."""
    await review_queue.skip_item(session, item_id, reviewer.user_id)


@router.delete("/items/{item_id}/skip", status_code=status.HTTP_204_NO_CONTENT, operation_id="review_unskip")
async def unskip(item_id: ItemId, session: SessionDep, reviewer: ReviewerDep) -> None:
    """Take back your skip: the item is offered to you again. 404 when you had not skipped it."""
    await review_queue.unskip_item(session, item_id, reviewer.user_id)


@router.get("/skipped", operation_id="review_list_skipped")
async def skipped(session: SessionDep, reviewer: ReviewerDep) -> list[SkippedItem]:
    """Your skips of items still waiting for an answer, latest first (at most 100)."""
    return await review_queue.skipped_items(session, reviewer.user_id)


@router.post(
    "/items/{item_id}/release", status_code=status.HTTP_204_NO_CONTENT, operation_id="review_release"
)
async def release(item_id: ItemId, session: SessionDep, reviewer: ReviewerDep) -> None:
    """Back to the queue for everybody, you included (the labeling page calls it when it closes)."""
    await review_queue.release_item(session, item_id, reviewer.user_id)


@router.post("/undo", operation_id="review_undo")
async def undo(session: SessionDep, reviewer: ReviewerDep) -> UndoOut:
    """Take back your latest standing answer; 404 when there is none."""
    return await review_queue.undo_last(session, reviewer.user_id)


@router.post("/items/{item_id}/undo", operation_id="review_undo_item")
async def undo_item(item_id: ItemId, session: SessionDep, reviewer: ReviewerDep) -> UndoOut:
    """Take back your answer to this item (to change it: claim it with `POST /items/{id}/claim`); 404
    when it has no standing answer of yours."""
    return await review_queue.undo_last(session, reviewer.user_id, item_id)


@router.get("/items/{item_id}/image", operation_id="review_item_image")
async def item_image(
    item_id: ItemId, state: StateDep, session: SessionDep, reviewer: ReviewerDep
) -> Response:
    image = await review_queue.item_image(session, state.blobs, item_id)
    # Images never change under an id; let the browser keep them while it works through the queue.
    return Response(
        image.data, media_type=image.content_type, headers={"Cache-Control": "private, max-age=3600"}
    )


@router.get("/items/{item_id}/neighbours", operation_id="review_item_neighbours")
async def neighbours(
    item_id: ItemId,
    state: StateDep,
    session: SessionDep,
    reviewer: ReviewerDep,
    k: Annotated[int, Query(ge=1, le=24)] = review_neighbours.K,
) -> NeighboursOut:
    """The `k` labelled images of the item's detector most like it, in the production model's
    embedding space, with their labels: what the model was taught about images like this one."""
    models = ProductionModels(state.blobs, state.bundles, state.model_cache)
    return await review_neighbours.similar_labelled(
        session, state.blobs, models, image_limits(state.settings), item_id, k
    )


@router.get("/images/{image_query_id}", operation_id="review_labelled_image")
async def labelled_image(
    image_query_id: Annotated[str, Path(max_length=60, pattern=ID_PATTERN)],
    state: StateDep,
    session: SessionDep,
    reviewer: ReviewerDep,
) -> Response:
    """The image of a labelled image query (a neighbour's)."""
    image = await review_neighbours.labelled_image(session, state.blobs, image_query_id)
    return Response(
        image.data, media_type=image.content_type, headers={"Cache-Control": "private, max-age=3600"}
    )


@router.get("/stats", operation_id="review_stats")
async def stats(
    session: SessionDep,
    reviewer: ReviewerDep,
    window_s: Annotated[float, Query(ge=60, le=30 * 24 * 3600)] = review_stats.DEFAULT_WINDOW_S,
) -> ReviewStatsOut:
    """Throughput per reviewer and lead time (query created → answered) over the last `window_s`."""
    return await review_stats.review_stats(session, window_s)
