"""Who is calling: an `x-api-token` header (devices, edges, scripts, admins) or a session cookie
(reviewers in a browser). Routes state what they need through the aliases in `deps.py`.

Known credentials are remembered in-process for `PRINCIPAL_CACHE_TTL_S` seconds, so that a busy
client (a reviewer answering several items a second, an edge posting frames) does not cost a database
look-up per request. The price: revoking a token, deactivating a user or ending a session elsewhere
takes effect within that TTL in every process; in the process that does it, `forget_digest` and
`forget_user` make it immediate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.db.models import ApiToken, Role, User, WebSession
from cloud.app.security import token_digest
from common.clock import as_utc

SESSION_COOKIE = "io_session"
# last_used_at is written at most this often per token, not on every request.
_TOUCH_EVERY = timedelta(minutes=1)
# How long a known token or session is trusted without asking the database again.
PRINCIPAL_CACHE_TTL_S = 5.0
_CACHE_MAX = 10_000


@dataclass(frozen=True)
class Principal:
    user_id: str
    username: str
    role: Role
    via: str  # "token" | "session"

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


class _PrincipalCache:
    """digest of a token or session cookie → (principal, monotonic expiry); only hits are kept."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[Principal, float]] = {}

    def get(self, digest: str) -> Principal | None:
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            self._entries.pop(digest, None)
            return None
        return entry[0]

    def put(self, digest: str, principal: Principal, ttl_s: float = PRINCIPAL_CACHE_TTL_S) -> None:
        if ttl_s <= 0:
            return
        if len(self._entries) >= _CACHE_MAX:
            self._entries.clear()  # rare (that many live credentials in a few seconds); simplest bound
        self._entries[digest] = (principal, time.monotonic() + ttl_s)

    def forget(self, digest: str) -> None:
        self._entries.pop(digest, None)

    def clear(self) -> None:
        self._entries.clear()

    def forget_user(self, user_id: str) -> None:
        for digest in [d for d, (p, _) in self._entries.items() if p.user_id == user_id]:
            self._entries.pop(digest, None)


_cache = _PrincipalCache()


def forget_digest(digest: str) -> None:
    """Drop one token or session (by its stored sha256) from this process's cache: revocation, logout."""
    _cache.forget(digest)


def forget_user(user_id: str) -> None:
    """Drop every cached credential of a user (deactivation, role change)."""
    _cache.forget_user(user_id)


def forget_all() -> None:
    """An app starting trusts nothing an earlier app of this process saw (perhaps on another database)."""
    _cache.clear()


class AuthError(Exception):
    """401: no credentials or unknown ones."""


class ForbiddenError(Exception):
    """403: known caller, wrong role."""


async def principal_from_token(session: AsyncSession, token: str) -> Principal | None:
    digest = token_digest(token)
    cached = _cache.get(digest)
    if cached is not None:
        return cached
    row = (
        await session.execute(
            select(ApiToken, User)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_hash == digest, ApiToken.revoked_at.is_(None), User.is_active)
        )
    ).first()
    if row is None:
        return None
    api_token, user = row
    now = datetime.now(UTC)
    last = api_token.last_used_at
    if last is None or now - as_utc(last) > _TOUCH_EVERY:
        await session.execute(update(ApiToken).where(ApiToken.id == api_token.id).values(last_used_at=now))
        await session.commit()
    principal = Principal(user.id, user.username, Role(user.role), "token")
    _cache.put(digest, principal)
    return principal


async def principal_from_session(session: AsyncSession, cookie: str) -> Principal | None:
    digest = token_digest(cookie)
    cached = _cache.get(digest)
    if cached is not None:
        return cached
    row = (
        await session.execute(
            select(WebSession, User)
            .join(User, User.id == WebSession.user_id)
            .where(WebSession.token_hash == digest, User.is_active)
        )
    ).first()
    if row is None:
        return None
    web_session, user = row
    left_s = (as_utc(web_session.expires_at) - datetime.now(UTC)).total_seconds()
    if left_s <= 0:
        return None
    principal = Principal(user.id, user.username, Role(user.role), "session")
    _cache.put(digest, principal, min(PRINCIPAL_CACHE_TTL_S, left_s))
    return principal


def require_role(principal: Principal, *roles: Role) -> Principal:
    """Admins may do everything; everyone else only what their role lists."""
    if principal.role is Role.ADMIN or principal.role in roles:
        return principal
    raise ForbiddenError(f"this route needs the role {' or '.join(r.value for r in roles)}")
