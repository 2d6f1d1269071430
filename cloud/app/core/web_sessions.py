"""Browser sessions for the review pages: log in with a password, get a random cookie whose sha256
is stored with an expiry; log out deletes it.

A login passes the throttle first (`login_limits`: per username and per client address), then its
password is checked on the dedicated `PasswordPool`, never on the event loop or the shared thread pool.
An unknown user costs the same scrypt as a wrong password and gets the same answer, so neither the
response nor its timing tells which usernames exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.auth import forget_digest
from cloud.app.core import login_limits
from cloud.app.core.login_limits import LoginLockedError, LoginPolicy
from cloud.app.db.models import Role, User, WebSession
from cloud.app.security import PasswordPool, PasswordPoolBusy, hash_password, new_session_token, token_digest
from cloud.app.settings import CloudSettings
from common.clock import utcnow

# Roles that may use the pages (devices have no password anyway).
PAGE_ROLES = frozenset({Role.ADMIN.value, Role.REVIEWER.value})
_DUMMY_HASH = hash_password("not a password anybody has")
# How long a client is told to wait when every password worker is busy.
BUSY_RETRY_S = 1


@dataclass(frozen=True)
class NewSession:
    cookie: str
    expires_at: datetime
    username: str


@dataclass(frozen=True)
class LoginRefused:
    """`credentials`: wrong or unknown (never told apart); `locked`: throttled; `busy`: try again."""

    reason: Literal["credentials", "locked", "busy"]
    retry_after_s: int = 0


@dataclass(frozen=True)
class LoginGate:
    """What a login needs besides the database: the throttle's numbers and the password workers.
    One per process (the app's lifespan makes it and closes it), so the worker limit holds overall."""

    policy: LoginPolicy
    passwords: PasswordPool

    @classmethod
    def for_settings(cls, settings: CloudSettings) -> LoginGate:
        return cls(
            LoginPolicy(
                max_failures_per_user=settings.login_max_failures_per_user,
                max_failures_per_address=settings.login_max_failures_per_address,
                window_s=settings.login_window_s,
                lockout_s=settings.login_lockout_s,
            ),
            PasswordPool(settings.password_workers, settings.password_queue, settings.password_cpu_share),
        )

    def close(self) -> None:
        """Stops the password workers."""
        self.passwords.close()


async def start_session(
    session: AsyncSession, gate: LoginGate, username: str, password: str, address: str, ttl_s: float
) -> NewSession | LoginRefused:
    """A new session for valid credentials of an active reviewer or admin, else why not."""
    if gate.passwords.full:
        return LoginRefused("busy", BUSY_RETRY_S)  # before any database work
    username = username.strip()
    now = utcnow()
    try:
        attempt = await login_limits.begin(session, gate.policy, username, address, now)
    except LoginLockedError as exc:
        return LoginRefused("locked", exc.retry_after_s)
    user = (
        await session.execute(select(User).where(User.username == username, User.is_active))
    ).scalar_one_or_none()
    stored = user.password_hash if user is not None else None
    await session.commit()  # no database connection is held while the password is checked
    try:
        ok = await gate.passwords.verify(password, stored or _DUMMY_HASH)
    except PasswordPoolBusy:
        await login_limits.abandon(session, attempt)
        return LoginRefused("busy", BUSY_RETRY_S)
    if user is None or not ok or not stored or user.role not in PAGE_ROLES:
        await login_limits.failed(session, gate.policy, utcnow())
        return LoginRefused("credentials")
    await login_limits.succeeded(session, attempt)
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
