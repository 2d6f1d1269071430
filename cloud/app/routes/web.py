"""The reviewer's pages: log in, queues, the keyboard-first labeling page, a detector, throughput.

Server-rendered (Jinja2); the labeling page drives the review API with a little vanilla JS. Pages need
a browser session: without one they redirect to /login (303), so a bookmark just works after logging in.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Form, Path, Query, Request, status
from starlette.responses import RedirectResponse, Response

from cloud.app.auth import SESSION_COOKIE
from cloud.app.core import edge_accuracy, hubs, notifications, review_queue, review_stats, web_sessions
from cloud.app.deps import SessionDep, StateDep
from cloud.app.errors import NotFoundError
from cloud.app.schemas.fields import ID_PATTERN
from cloud.app.web.pages import PageUser, admins_only, safe_next
from cloud.app.web.pages import render as _page
from cloud.app.web.pages import to_login as _to_login

router = APIRouter(prefix="", tags=["web"], include_in_schema=False)

DetectorQuery = Annotated[str | None, Query(max_length=40, pattern=ID_PATTERN)]


@router.get("/")
async def home() -> Response:
    return RedirectResponse("/ui/queues", status_code=status.HTTP_303_SEE_OTHER)


NextPage = Annotated[str | None, Query(alias="next", max_length=1000)]


@router.get("/favicon.ico")
async def favicon() -> Response:
    """Browsers ask for it on any page, ours or the API's JSON: the page icon, for anyone."""
    return RedirectResponse("/static/favicon.svg", status_code=status.HTTP_308_PERMANENT_REDIRECT)


@router.get("/login")
async def login_form(request: Request, next_page: NextPage = None) -> Response:
    return _page(request, "login.html", None, next_page=next_page if safe_next(next_page) else None)


@router.post("/login")
async def login(
    request: Request,
    state: StateDep,
    session: SessionDep,
    username: Annotated[str, Form(max_length=100)] = "",
    password: Annotated[str, Form(max_length=200)] = "",
    next_page: Annotated[str, Form(alias="next", max_length=1000)] = "",
) -> Response:
    """Back to the page that sent the person here (`next`, one of ours), else the queues."""
    address = request.client.host if request.client else ""
    ttl_s = state.settings.session_ttl_s
    created = await web_sessions.start_session(session, state.login_gate, username, password, address, ttl_s)
    if isinstance(created, web_sessions.LoginRefused):
        await asyncio.sleep(state.settings.login_refusal_delay_s)
        return _refused(request, created, username, next_page)
    landing = next_page if safe_next(next_page) else "/ui/queues"
    response = RedirectResponse(landing, status_code=status.HTTP_303_SEE_OTHER)
    response.set_cookie(
        SESSION_COOKIE, created.cookie, max_age=int(ttl_s), **session_cookie_flags(request, state)
    )
    return response


def _refused(request: Request, refused: web_sessions.LoginRefused, username: str, next_page: str) -> Response:
    """The login page again with why: one message for wrong and unknown, 429 with Retry-After else."""
    if refused.reason == "credentials":
        code, error, headers = status.HTTP_401_UNAUTHORIZED, "Wrong username or password.", {}
    else:
        wait = refused.retry_after_s
        code, headers = status.HTTP_429_TOO_MANY_REQUESTS, {"Retry-After": str(wait)}
        if refused.reason == "locked":
            error = f"Too many failed attempts. Try again in {wait} s."
        else:
            error = "The server is busy checking other logins. Try again in a moment."
    response = _page(
        request,
        "login.html",
        None,
        status_code=code,
        error=error,
        username=username,
        next_page=next_page if safe_next(next_page) else None,
    )
    response.headers.update(headers)
    return response


def session_cookie_flags(request: Request, state: StateDep) -> dict[str, Any]:
    """HttpOnly and SameSite=Lax always; Secure when browsers reach us over HTTPS: the public URL says
    so, or the request came in over it (directly, or through a trusted proxy's X-Forwarded-Proto)."""
    https = state.settings.public_url.lower().startswith("https://") or request.url.scheme == "https"
    return {"httponly": True, "samesite": "lax", "secure": https, "path": "/"}


@router.post("/logout")
async def logout(request: Request, state: StateDep, session: SessionDep) -> Response:
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        await web_sessions.end_session(session, cookie)
    response = _to_login()
    response.delete_cookie(SESSION_COOKIE, **session_cookie_flags(request, state))
    return response


@router.get("/ui")
async def ui_home() -> Response:
    return RedirectResponse("/ui/queues", status_code=status.HTTP_303_SEE_OTHER)


@router.get("/ui/queues")
async def queues_page(request: Request, session: SessionDep, user: PageUser) -> Response:
    if user is None:
        return _to_login(request)
    queues = await review_queue.queue_summaries(session, user.user_id)
    # What needs people first (most waiting on top); queues with nothing waiting after, by name.
    waiting = sorted((q for q in queues if q.pending), key=lambda q: (-q.pending, q.detector_name))
    empty = [q for q in queues if not q.pending]
    return _page(request, "queues.html", user, queues=waiting + empty, empty_count=len(empty), nav="queues")


@router.get("/ui/label")
async def label_page(
    request: Request, state: StateDep, user: PageUser, detector_id: DetectorQuery = None
) -> Response:
    if user is None:
        return _to_login(request)
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
        return _to_login(request)
    try:
        overview = await review_stats.detector_overview(session, detector_id)
        accuracy = await edge_accuracy.edge_accuracy(session, detector_id)
    except NotFoundError as exc:
        return _page(request, "error.html", user, status_code=404, title="Not found", message=str(exc))
    # What was notified about this detector (alerts, promotions, waiting escalations): reviewers too.
    told = [event for event, _ in await notifications.recent_events(session, 10, detector_id)]
    return _page(request, "detector.html", user, d=overview, acc=accuracy, notified=told, nav="queues")


@router.get("/ui/edges")
async def edges_page(request: Request, session: SessionDep, state: StateDep, user: PageUser) -> Response:
    """Administrators: every edge, online or not, its outbox and the versions it serves."""
    if user is None:
        return _to_login(request)
    if (refused := admins_only(request, user, "edges")) is not None:
        return refused
    window_s = state.settings.edge_online_window_s
    rows = await hubs.edge_rows(session, window_s)
    return _page(request, "edges.html", user, edges=rows, online_window_s=window_s, nav="edges")


@router.get("/ui/stats")
async def stats_page(
    request: Request,
    session: SessionDep,
    user: PageUser,
    window_s: Annotated[float, Query(ge=60, le=30 * 24 * 3600)] = review_stats.DEFAULT_WINDOW_S,
) -> Response:
    if user is None:
        return _to_login(request)
    stats = await review_stats.review_stats(session, window_s)
    return _page(request, "stats.html", user, stats=stats, nav="stats")
