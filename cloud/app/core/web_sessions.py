"""Browser sessions for the review pages: log in with a password, get a random cookie whose sha256
is stored with an expiry; log out deletes it.

Password checks (scrypt, tens of milliseconds of CPU) run off the event loop. An unknown user costs
the same scrypt as a wrong password, so response times do not tell which usernames exist.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.auth import forget_digest
from cloud.app.core.review_queue import utcnow
from cloud.app.db.models import Role, User, WebSession
from cloud.app.security import hash_password, new_session_token, token_digest, verify_password

# Roles that may use the pages (devices have no password anyway).
PAGE_ROLES = frozenset({Role.ADMIN.value, Role.REVIEWER.value})
_DUMMY_HASH = hash_password("not a password anybody has")


@dataclass(frozen=True)
class NewSession:
    cookie: str
    expires_at: datetime
    username: str


async def start_session(
    session: AsyncSession, username: str, password: str, ttl_s: float
) -> NewSession | None:
    """A new session for valid credentials of an active reviewer or admin, else None."""
    user = (
        await session.execute(select(User).where(User.username == username.strip(), User.is_active))
    ).scalar_one_or_none()
    stored = user.password_hash if user is not None else None
    ok = await asyncio.to_thread(verify_password, password, stored or _DUMMY_HASH)
    if user is None or not ok or not stored or user.role not in PAGE_ROLES:
        await session.rollback()
        return None
    now = utcnow()
    cookie = new_session_token()
    expires_at = now + timedelta(seconds=ttl_s)
    # Housekeeping on the way: expired sessions are useless rows.
    await session.execute(delete(WebSession).where(WebSession.expires_at < now))
    session.add(
        WebSession(token_hash=token_digest(cookie), user_id=user.id, created_at=now, expires_at=expires_at)
    )
    await session.commit()
    return NewSession(cookie, expires_at, user.username)


async def end_session(session: AsyncSession, cookie: str) -> None:
    digest = token_digest(cookie)
    await session.execute(delete(WebSession).where(WebSession.token_hash == digest))
    await session.commit()
    forget_digest(digest)
