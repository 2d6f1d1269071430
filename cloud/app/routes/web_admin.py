"""Administrators' pages: users and API tokens (`/ui/users`).

The page only shows; every change it offers (create, role, deactivate, tokens) is a call its script
makes to the admin API (cloud.app.routes.admin) with the session cookie, as a script with a token would.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from cloud.app.core import users
from cloud.app.db.models import Role
from cloud.app.deps import SessionDep
from cloud.app.web.pages import PageUser, admins_only, render, to_login

router = APIRouter(prefix="", tags=["web"], include_in_schema=False)


@router.get("/ui/users")
async def users_page(request: Request, session: SessionDep, user: PageUser) -> Response:
    """Every account with its live token count, and every token (newest first), revoked ones too."""
    if user is None:
        return to_login(request)
    if (refused := admins_only(request, user, "users")) is not None:
        return refused
    accounts = await users.list_users_with_token_counts(session)
    tokens = list(reversed(await users.list_tokens(session)))
    return render(
        request,
        "users.html",
        user,
        accounts=accounts,
        tokens=tokens,
        roles=list(Role),
        password_roles=[r.value for r in users.ROLES_WITH_PASSWORD],
        same_kind=users.same_kind_roles,
        nav="users",
    )
