"""What every server-rendered page shares: the templates with their filters, the signed-in reviewer or
admin (from the session cookie), the redirect to /login, and rendering with the common context."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request, status
from fastapi.templating import Jinja2Templates
from starlette.responses import RedirectResponse, Response

from cloud.app.auth import SESSION_COOKIE, Principal, principal_from_session
from cloud.app.core import web_sessions
from cloud.app.deps import SessionDep

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
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC" if precise else "%Y-%m-%d %H:%M UTC")


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


def to_login() -> Response:
    return RedirectResponse("/login", status_code=status.HTTP_303_SEE_OTHER)


def render(
    request: Request, name: str, user: Principal | None, status_code: int = 200, **context: Any
) -> Response:
    return TEMPLATES.TemplateResponse(request, name, {"user": user, **context}, status_code=status_code)
