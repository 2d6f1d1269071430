"""Training pages of the review UI: a detector's training jobs (the running one live), its model
versions with their learning curves, confusion matrix and reliability diagram (a detection head's:
held-out mAP, count accuracy and count MAE, and its picture of held-out detections), and a
side-by-side comparison of two versions.

Server-rendered like the other pages; a little vanilla JS (static/training.js) polls the status route
every two seconds while a job runs. Pages need a browser session (reviewers and admins) and redirect to
/login without one; admins also get buttons that start and cancel jobs through the training-jobs API.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from starlette.responses import JSONResponse, Response

from cloud.app.auth import Principal
from cloud.app.core import training_pages
from cloud.app.deps import SessionDep, StateDep
from cloud.app.errors import NotFoundError
from cloud.app.schemas.fields import ID_PATTERN
from cloud.app.web.pages import PageUser, render
from cloud.app.web.pages import to_login as _to_login

router = APIRouter(prefix="/ui/detectors", tags=["web"], include_in_schema=False)


DetectorId = Annotated[str, Path(max_length=40, pattern=ID_PATTERN)]
ModelQuery = Annotated[str | None, Query(max_length=60, pattern=ID_PATTERN)]


def _page(
    request: Request, name: str, user: Principal | None, status_code: int = 200, **context: Any
) -> Response:
    return render(request, name, user, status_code, **{"nav": "queues", **context})


def _not_found(request: Request, user: Principal, exc: NotFoundError) -> Response:
    return _page(request, "error.html", user, status_code=404, title="Not found", message=str(exc))


@router.get("/{detector_id}/training")
async def training_page(
    request: Request, detector_id: DetectorId, state: StateDep, session: SessionDep, user: PageUser
) -> Response:
    if user is None:
        return _to_login(request)
    try:
        overview = await training_pages.training_overview(session, state.blobs, detector_id)
    except NotFoundError as exc:
        return _not_found(request, user, exc)
    return _page(request, "training_detector.html", user, o=overview, d=overview.detector)


@router.get("/{detector_id}/training/status")
async def training_status(detector_id: DetectorId, session: SessionDep, user: PageUser) -> Response:
    """JSON for the page's poller: the newest job of the detector, with its progress and log tail."""
    if user is None:
        return JSONResponse({"detail": "log in to see training progress"}, status_code=401)
    try:
        body = await training_pages.training_status(session, detector_id)
    except NotFoundError as exc:
        return JSONResponse({"detail": str(exc)}, status_code=404)
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.get("/{detector_id}/compare")
async def compare_page(
    request: Request,
    detector_id: DetectorId,
    state: StateDep,
    session: SessionDep,
    user: PageUser,
    a: ModelQuery = None,
    b: ModelQuery = None,
) -> Response:
    if user is None:
        return _to_login(request)
    try:
        comparison = await training_pages.compare_versions(session, state.blobs, detector_id, a, b)
    except NotFoundError as exc:
        return _not_found(request, user, exc)
    except training_pages.NothingToCompare as exc:
        return _page(
            request,
            "error.html",
            user,
            title="Nothing to compare yet",
            message=str(exc),
            back=(f"/ui/detectors/{detector_id}/training", "Back to its training page"),
        )
    return _page(request, "training_compare.html", user, c=comparison, d=comparison.detector)
