"""What every server-rendered page shares: the templates with their filters, the signed-in reviewer or
admin (from the session cookie), the redirect to /login, and rendering with the common context."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import RedirectResponse, Response
from starlette.types import ExceptionHandler

from cloud.app.auth import SESSION_COOKIE, Principal, principal_from_session
from cloud.app.core import web_sessions
from cloud.app.db.models import Role
from cloud.app.deps import SessionDep
from common.clock import as_utc

TEMPLATES = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")


def seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:.1f} h"


def when(moment: datetime | None, precise: bool = False) -> str:
    if moment is None:
        return "–"
    return (
        as_utc(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC" if precise else "%Y-%m-%d %H:%M UTC")
    )


def number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}"


TEMPLATES.env.globals.update(seconds=seconds, when=when, number=number)


async def page_user(request: Request, session: SessionDep) -> Principal | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    principal = await principal_from_session(session, cookie)
    return principal if principal is not None and principal.role in web_sessions.PAGE_ROLES else None


PageUser = Annotated[Principal | None, Depends(page_user)]


def to_login(request: Request | None = None) -> Response:
    """To the login page; from a page (a bookmark, an expired session) with `next`, so that logging in
    leads back to it."""
    target = "/login"
    if request is not None and request.method == "GET":
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if safe_next(here):
            target += "?" + urlencode({"next": here})
    return RedirectResponse(target, status_code=status.HTTP_303_SEE_OTHER)


def safe_next(path: str | None) -> bool:
    """Only our own pages: a path under /ui, never another site (`//host`, `/\\host`) or a URL."""
    if not path or len(path) > 1000 or not path.startswith(PAGE_PREFIX + "/"):
        return False
    return not any(c in path for c in ("\\", "\r", "\n", "\t")) and "//" not in path and "@" not in path


def render(
    request: Request, name: str, user: Principal | None, status_code: int = 200, **context: Any
) -> Response:
    return TEMPLATES.TemplateResponse(request, name, {"user": user, **context}, status_code=status_code)


def admins_only(request: Request, user: Principal, page: str) -> Response | None:
    """The 403 page for anyone but an administrator (None: go on and render)."""
    if user.role is Role.ADMIN:
        return None
    message = f"The {page} page is for administrators."
    return render(request, "error.html", user, status_code=403, title="Administrators only", message=message)


PAGE_PREFIX = "/ui"


def install_page_errors(app: FastAPI) -> None:
    """A person who follows a bad link under /ui gets a page, not the API's JSON: an unknown path is
    "Not found", a malformed query value says which. Every other path keeps the JSON errors
    (call after common.http.install_error_handlers)."""
    json_http = app.exception_handlers[StarletteHTTPException]
    json_invalid = app.exception_handlers[RequestValidationError]

    def is_page(request: Request) -> bool:
        return request.url.path == PAGE_PREFIX or request.url.path.startswith(PAGE_PREFIX + "/")

    async def http_error(request: Request, exc: Exception) -> Response:
        if not is_page(request) or not isinstance(exc, StarletteHTTPException):
            return await _call(json_http, request, exc)
        title = "Not found" if exc.status_code == 404 else f"Error {exc.status_code}"
        message = "There is no page at this address." if exc.status_code == 404 else str(exc.detail)
        return render(request, "error.html", None, status_code=exc.status_code, title=title, message=message)

    async def invalid(request: Request, exc: Exception) -> Response:
        if not is_page(request) or not isinstance(exc, RequestValidationError):
            return await _call(json_invalid, request, exc)
        fields = sorted({str(err.get("loc", ("", "?"))[-1]) for err in exc.errors()})
        message = f"This page cannot show that: check {', '.join(fields)} in the address."
        return render(request, "error.html", None, status_code=400, title="Bad address", message=message)

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)


async def _call(handler: ExceptionHandler, request: Request, exc: Exception) -> Response:
    """The JSON handler common.http installed (async ones there; Starlette allows either)."""
    answer: object = handler(request, exc)  # type: ignore[arg-type]
    if inspect.isawaitable(answer):
        answer = await answer
    assert isinstance(answer, Response)
    return answer
