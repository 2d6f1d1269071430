"""Login throttling by username and by client address, kept in the database so that every replica of
the cloud behind one PostgreSQL counts the same attempts.

A key (the username as typed, or the client address; an IPv6 address by its /64, which one client
usually holds whole) is locked once it has `max_failures` failed attempts within `window_s`, for
`lockout_s` after the last of them; the lock ends by itself. While locked, an attempt is refused
before any password is checked, so it costs no scrypt and is not counted. Unknown usernames are
counted and locked exactly like real ones, so the answers never tell which usernames exist.

Each attempt is written before its password is checked, and removed again if it succeeds or is never
checked: guesses sent at the same moment count against each other instead of all passing an empty
count. A success clears the username's failures but not the address's, so signing in to one account
of one's own does not reset the count for guessing at others.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.db.models import LoginAttempt
from common.clock import as_utc

USER = "user"
ADDRESS = "address"


@dataclass(frozen=True)
class LoginPolicy:
    max_failures_per_user: int
    max_failures_per_address: int
    window_s: float
    lockout_s: float

    def limit(self, kind: str) -> int:
        return self.max_failures_per_user if kind == USER else self.max_failures_per_address


@dataclass(frozen=True)
class Attempt:
    """The rows one attempt wrote: kind → (subject digest, row id)."""

    rows: dict[str, tuple[str, int]]


class LoginLockedError(Exception):
    """Too many recent failures for this username or address."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many failed logins; try again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


def address_key(address: str) -> str:
    """IPv4 as is, IPv6 by its /64; anything else (a unix socket, no address) as given."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _digest(kind: str, value: str) -> str:
    return hashlib.sha256(f"{kind}\0{value}".encode()).hexdigest()


async def begin(
    session: AsyncSession, policy: LoginPolicy, username: str, address: str, now: datetime
) -> Attempt:
    """Record an attempt and check the locks, or raise `LoginLockedError` (the attempt is not kept)."""
    subjects = {USER: _digest(USER, username), ADDRESS: _digest(ADDRESS, address_key(address))}
    added = {kind: LoginAttempt(kind=kind, subject=subject, at=now) for kind, subject in subjects.items()}
    session.add_all(added.values())
    await session.commit()  # visible to concurrent attempts (and other replicas) before we count
    attempt = Attempt({kind: (subjects[kind], row.id) for kind, row in added.items()})
    wait_s = 0.0
    for kind, (subject, row_id) in attempt.rows.items():
        wait_s = max(wait_s, await _locked_for(session, policy, kind, subject, row_id, now))
    if wait_s > 0:
        await abandon(session, attempt)
        raise LoginLockedError(max(1, math.ceil(wait_s)))
    return attempt


async def _locked_for(
    session: AsyncSession, policy: LoginPolicy, kind: str, subject: str, row_id: int, now: datetime
) -> float:
    """Seconds this key stays locked, counting only the attempts that came before this one."""
    count, last = (
        await session.execute(
            select(func.count(), func.max(LoginAttempt.at)).where(
                LoginAttempt.kind == kind,
                LoginAttempt.subject == subject,
                LoginAttempt.at > now - timedelta(seconds=policy.window_s),
                LoginAttempt.id < row_id,
            )
        )
    ).one()
    if count < policy.limit(kind) or last is None:
        return 0.0
    return (as_utc(last) + timedelta(seconds=policy.lockout_s) - now).total_seconds()


async def failed(session: AsyncSession, policy: LoginPolicy, now: datetime) -> None:
    """The attempt's rows stay as failures; rows past the window are of no use to anyone any more."""
    cutoff = now - timedelta(seconds=policy.window_s + policy.lockout_s)
    await session.execute(delete(LoginAttempt).where(LoginAttempt.at < cutoff))
    await session.commit()


async def succeeded(session: AsyncSession, attempt: Attempt) -> None:
    """The username starts afresh; the address keeps its failures (only this attempt's row goes).
    Not committed: the caller commits it with the new session."""
    subject, _ = attempt.rows[USER]
    _, address_row = attempt.rows[ADDRESS]
    await session.execute(
        delete(LoginAttempt).where(LoginAttempt.kind == USER, LoginAttempt.subject == subject)
    )
    await session.execute(delete(LoginAttempt).where(LoginAttempt.id == address_row))


async def abandon(session: AsyncSession, attempt: Attempt) -> None:
    """An attempt whose password was never checked (locked, or the server was busy) counts for nothing."""
    ids = [row_id for _, row_id in attempt.rows.values()]
    await session.execute(delete(LoginAttempt).where(LoginAttempt.id.in_(ids)))
    await session.commit()
