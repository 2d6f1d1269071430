"""The reviewer's pages: log in, queues, the keyboard-first labeling page, a detector, throughput.

Server-rendered (Jinja2); the labeling page drives the review API with a little vanilla JS. Pages need
a browser session: without one they redirect to /login (303), so a bookmark just works after logging in.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Path, Query, Request, status
from starlette.responses import RedirectResponse, Response

from cloud.app.auth import SESSION_COOKIE
from cloud.app.core import edge_accuracy, review_queue, review_stats, web_sessions
from cloud.app.deps import SessionDep, StateDep
from cloud.app.errors import NotFoundError
from cloud.app.schemas.fields import ID_PATTERN
from cloud.app.web.pages import PageUser
from cloud.app.web.pages import render as _page
from cloud.app.web.pages import to_login as _to_login

router = APIRouter(prefix="", tags=["web"], include_in_schema=False)

DetectorQuery = Annotated[str | None, Query(max_length=40, pattern=ID_PATTERN)]


@router.get("/")
async def home() -> Response:
    return RedirectResponse("/ui/queues", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/login")
async def login_form(request: Request) -> Response:
    return _page(request, "login.html", None)


@router.post("/login")
async def login(
    request: Request,
    state: StateDep,
    session: SessionDep,
    username: Annotated[str, Form(max_length=100)] = "",
    password: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    created = await web_sessions.start_session(session, username, password, state.settings.session_ttl_s)
    if created is None:
        return _page(
            request,
            "login.html",
            None,
            status_code=status.HTTP_401_UNAUTHORIZED,
            error="Wrong username or password.",
            username=username,
        )
    response = RedirectResponse("/ui/queues", status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        SESSION_COOKIE,
        created.cookie,
        max_age=int(state.settings.session_ttl_s),
        httponly=True,
        samesite="lax",
        secure=state.settings.public_url.startswith("https://"),
        path="/",
    )
    return response


@router.post("/logout")
async def logout(request: Request, session: SessionDep) -> Response:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        await web_sessions.end_session(session, cookie)
    response = _to_login()
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/ui")
async def ui_home() -> Response:
    return RedirectResponse("/ui/queues", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/ui/queues")
async def queues_page(request: Request, session: SessionDep, user: PageUser) -> Response:
    if user is None:
        return _to_login()
    queues = await review_queue.queue_summaries(session, user.user_id)
    return _page(request, "queues.html", user, queues=queues, nav="queues")


@router.get("/ui/label")
async def label_page(
    request: Request, state: StateDep, user: PageUser, detector_id: DetectorQuery = None
) -> Response:
    if user is None:
        return _to_login()
    return _page(
        request,
        "label.html",
        user,
        detector_id=detector_id or "",
        lease_s=state.settings.review_lease_s,
        nav="label",
    )


@router.get("/ui/detectors/{detector_id}")
async def detector_page(
    request: Request,
    session: SessionDep,
    user: PageUser,
    detector_id: Annotated[str, Path(max_length=40, pattern=ID_PATTERN)],
) -> Response:
    if user is None:
        return _to_login()
    try:
        overview = await review_stats.detector_overview(session, detector_id)
        accuracy = await edge_accuracy.edge_accuracy(session, detector_id)
    except NotFoundError as exc:
        return _page(request, "error.html", user, status_code=404, title="Not found", message=str(exc))
    return _page(request, "detector.html", user, d=overview, acc=accuracy, nav="queues")


@router.get("/ui/stats")
async def stats_page(
    request: Request,
    session: SessionDep,
    user: PageUser,
    window_s: Annotated[float, Query(ge=60, le=30 * 24 * 3600)] = review_stats.DEFAULT_WINDOW_S,
) -> Response:
    if user is None:
        return _to_login()
    stats = await review_stats.review_stats(session, window_s)
    return _page(request, "stats.html", user, stats=stats, nav="stats")
