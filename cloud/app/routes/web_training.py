"""Training pages of the review UI: a detector's training jobs (the running one live), its model
versions with their learning curves, confusion matrix and reliability diagram, and a side-by-side
comparison of two versions.

Server-rendered like the other pages; a little vanilla JS (static/training.js) polls the status route
every two seconds while a job runs. Pages need a browser session (reviewers and admins) and redirect to
/login without one; admins also get buttons that start and cancel jobs through the training-jobs API.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, status
from fastapi.templating import Jinja2Templates
from starlette.responses import JSONResponse, RedirectResponse, Response

from cloud.app.auth import SESSION_COOKIE, Principal, principal_from_session
from cloud.app.core import training_pages, web_sessions
from cloud.app.deps import SessionDep, StateDep
from cloud.app.errors import NotFoundError
from cloud.app.schemas.fields import ID_PATTERN

router = APIRouter(prefix="/ui/detectors", tags=["web"], include_in_schema=False)

TEMPLATES = Jinja2Templates(directory=FilePath(__file__).resolve().parents[1] / "web" / "templates")

DetectorId = Annotated[str, Path(max_length=40, pattern=ID_PATTERN)]
ModelQuery = Annotated[str | None, Query(max_length=60, pattern=ID_PATTERN)]


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "–"
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def _number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}"


TEMPLATES.env.globals.update(when=_when, seconds=_seconds, number=_number)


async def page_user(request: Request, session: SessionDep) -> Principal | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    principal = await principal_from_session(session, cookie)
    return principal if principal is not None and principal.role in web_sessions.PAGE_ROLES else None


PageUser = Annotated[Principal | None, Depends(page_user)]


def _to_login() -> Response:
    return RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)


def _page(
    request: Request, name: str, user: Principal | None, status_code: int = 200, **context: Any
) -> Response:
    return TEMPLATES.TemplateResponse(
        request, name, {"user": user, "nav": "queues", **context}, status_code=status_code
    )


def _not_found(request: Request, user: Principal, exc: NotFoundError) -> Response:
    return _page(request, "error.html", user, status_code=404, title="Not found", message=str(exc))


@router.get("/{detector_id}/training")
async def training_page(
    request: Request, detector_id: DetectorId, state: StateDep, session: SessionDep, user: PageUser
) -> Response:
    if user is None:
        return _to_login()
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
        return _to_login()
    try:
        comparison = await training_pages.compare_versions(session, state.blobs, detector_id, a, b)
    except NotFoundError as exc:
        return _not_found(request, user, exc)
    return _page(request, "training_compare.html", user, c=comparison, d=comparison.detector)
