"""Who is calling: an `x-api-token` header (devices, edges, scripts, admins) or a session cookie
(reviewers in a browser). Routes state what they need through the aliases in `deps.py`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.db.models import ApiToken, Role, User, WebSession
from cloud.app.security import token_digest

SESSION_COOKIE = "io_session"
# last_used_at is written at most this often per token, not on every request.
_TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    user_id: str
    username: str
    role: Role
    via: str  # "token" | "session"

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


class AuthError(Exception):
    """401: no credentials or unknown ones."""


class ForbiddenError(Exception):
    """403: known caller, wrong role."""


async def principal_from_token(session: AsyncSession, token: str) -> Principal | None:
    row = (
        await session.execute(
            select(ApiToken, User)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_hash == token_digest(token), ApiToken.revoked_at.is_(None), User.is_active)
        )
    ).first()
    if row is None:
        return None
    api_token, user = row
    now = datetime.now(UTC)
    last = api_token.last_used_at
    if last is None or now - _aware(last) > _TOUCH_EVERY:
        await session.execute(update(ApiToken).where(ApiToken.id == api_token.id).values(last_used_at=now))
        await session.commit()
    return Principal(user.id, user.username, Role(user.role), "token")


async def principal_from_session(session: AsyncSession, cookie: str) -> Principal | None:
    row = (
        await session.execute(
            select(WebSession, User)
            .join(User, User.id == WebSession.user_id)
            .where(WebSession.token_hash == token_digest(cookie), User.is_active)
        )
    ).first()
    if row is None:
        return None
    web_session, user = row
    if _aware(web_session.expires_at) <= datetime.now(UTC):
        return None
    return Principal(user.id, user.username, Role(user.role), "session")


def require_role(principal: Principal, *roles: Role) -> Principal:
    """Admins may do everything; everyone else only what their role lists."""
    if principal.role is Role.ADMIN or principal.role in roles:
        return principal
    raise ForbiddenError(f"this route needs the role {' or '.join(r.value for r in roles)}")


def _aware(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; they are UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
