"""Users and API tokens. Tokens are shown once, at creation; only their sha256 and a short snippet
are stored. Deactivating a user or revoking a token takes effect at once in this process and within
the credential cache's TTL (`cloud.app.auth.PRINCIPAL_CACHE_TTL_S`) in the other replicas.

`audited_by` names the admin whose request it is (the audit log); the first start and the demo
seeding make accounts and tokens of their own without one. An admin may not demote or deactivate
their own account (another admin can): a slip of the mouse must not lock the system out."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.auth import Principal, forget_digest, forget_user
from cloud.app.core.audit import AuditAction, record
from cloud.app.db.models import ApiToken, Role, User
from cloud.app.errors import BadRequestError, ConflictError, NotFoundError
from cloud.app.security import hash_password, new_api_token, new_token_id, new_user_id, token_digest

# People sign in to the web pages; devices only ever use tokens.
ROLES_WITH_PASSWORD = (Role.ADMIN, Role.REVIEWER)
ROLES_WITH_TOKENS_ONLY = (Role.DEVICE, Role.TRAINER)


def same_kind_roles(role: Role | str) -> tuple[Role, ...]:
    """The roles an account of this role may be given: a person stays a person (a password, the web
    pages), a device or trainer stays token-only; crossing over is a new account."""
    return ROLES_WITH_PASSWORD if Role(role) in ROLES_WITH_PASSWORD else ROLES_WITH_TOKENS_ONLY


async def create_user(
    session: AsyncSession, username: str, role: Role, password: str | None = None, email: str = ""
) -> User:
    """Adds the user to the session (flushed, not committed). scrypt runs off the event loop."""
    password_hash = await asyncio.to_thread(hash_password, password) if password else None
    user = User(
        id=new_user_id(),
        username=username,
        email=email or f"{username}@intellioptics.local",
        role=role,
        password_hash=password_hash,
    )
    session.add(user)
    await session.flush()
    return user


async def create_token(session: AsyncSession, user: User, name: str, token: str | None = None) -> str:
    """Adds a token for `user` (flushed, not committed) and returns the raw token."""
    return (await _add_token(session, user, name, token))[1]


async def _add_token(
    session: AsyncSession, user: User, name: str, token: str | None = None
) -> tuple[ApiToken, str]:
    raw = token or new_api_token()
    row = ApiToken(
        id=new_token_id(), name=name, user_id=user.id, token_hash=token_digest(raw), snippet=raw[:20]
    )
    session.add(row)
    await session.flush()
    return row, raw


async def list_users(session: AsyncSession) -> Sequence[User]:
    return (await session.execute(select(User).order_by(User.created_at, User.username))).scalars().all()


async def get_user(session: AsyncSession, user_id: str) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFoundError(f"user {user_id} not found")
    return user


async def add_user(
    session: AsyncSession,
    username: str,
    role: Role,
    password: str | None,
    email: str = "",
    audited_by: Principal | None = None,
) -> User:
    """An account made by an administrator: people get a password, devices and trainers get none
    (they use tokens)."""
    if role in ROLES_WITH_PASSWORD and not password:
        raise BadRequestError(f"a {role.value} needs a password")
    if role not in ROLES_WITH_PASSWORD and password:
        raise BadRequestError(f"{role.value} accounts sign in with API tokens, not passwords")
    try:
        user = await create_user(session, username, role, password, email)
        if audited_by is not None:
            record(
                session,
                audited_by,
                AuditAction.USER_CREATE,
                "user",
                user.id,
                {"username": username, "role": role.value},
            )
        await session.commit()
    except IntegrityError as exc:
        await session.rollback()
        raise ConflictError(f"the username {username!r} is taken") from exc
    return user


async def list_users_with_token_counts(session: AsyncSession) -> list[tuple[User, int]]:
    """Each user with how many of its tokens still work (not revoked), for the users page."""
    live = (
        select(ApiToken.user_id, func.count().label("n"))
        .where(ApiToken.revoked_at.is_(None))
        .group_by(ApiToken.user_id)
        .subquery()
    )
    rows = await session.execute(
        select(User, func.coalesce(live.c.n, 0))
        .outerjoin(live, live.c.user_id == User.id)
        .order_by(User.created_at, User.username)
    )
    return [(user, int(count)) for user, count in rows.all()]


async def _refuse_losing_the_last_admin(session: AsyncSession, user: User, what: str) -> None:
    if not (user.is_active and user.role == Role.ADMIN):
        return
    active_admins = (
        await session.execute(
            select(func.count()).select_from(User).where(User.role == Role.ADMIN, User.is_active)
        )
    ).scalar_one()
    if active_admins <= 1:
        raise ConflictError(f"the last active admin cannot be {what}")


def _refuse_self(user: User, audited_by: Principal | None, what: str) -> None:
    if audited_by is not None and audited_by.user_id == user.id:
        raise ConflictError(f"you cannot {what} your own account; another admin can")


async def deactivate_user(session: AsyncSession, user_id: str, audited_by: Principal | None = None) -> User:
    """Keeps the row (labels and tokens refer to it); neither the caller's own account nor the last
    active admin can be deactivated."""
    user = await get_user(session, user_id)
    _refuse_self(user, audited_by, "deactivate")
    await _refuse_losing_the_last_admin(session, user, "deactivated")
    await session.execute(
        update(User)
        .where(User.id == user_id)
        .values(is_active=False)
        .execution_options(synchronize_session=False)
    )
    if audited_by is not None and user.is_active:
        record(session, audited_by, AuditAction.USER_DEACTIVATE, "user", user_id, {"username": user.username})
    await session.commit()
    forget_user(user_id)
    await session.refresh(user)
    return user


async def activate_user(session: AsyncSession, user_id: str, audited_by: Principal | None = None) -> User:
    """Undoes a deactivation: its tokens that were not revoked and its password work again."""
    user = await get_user(session, user_id)
    if not user.is_active:
        user.is_active = True
        if audited_by is not None:
            record(
                session, audited_by, AuditAction.USER_ACTIVATE, "user", user_id, {"username": user.username}
            )
        await session.commit()
        forget_user(user_id)
        await session.refresh(user)
    return user


async def change_role(
    session: AsyncSession, user_id: str, role: Role, audited_by: Principal | None = None
) -> User:
    """A new role, in force at once in this process (its cached credentials are forgotten). People
    stay people and token-only accounts stay token-only (`same_kind_roles`); an admin cannot change
    their own role, and the last active admin keeps theirs."""
    user = await get_user(session, user_id)
    previous = Role(user.role)
    if previous is role:
        return user
    _refuse_self(user, audited_by, "change the role of")
    if role not in same_kind_roles(previous):
        kind = "signs in with a password" if previous in ROLES_WITH_PASSWORD else "uses API tokens only"
        raise ConflictError(
            f"this {previous.value} account {kind}, so it cannot be given the {role.value} role: "
            "create a new account for that"
        )
    if previous is Role.ADMIN:
        await _refuse_losing_the_last_admin(session, user, "demoted")
    user.role = role.value
    if audited_by is not None:
        detail = {"username": user.username, "role": role.value, "previous_role": previous.value}
        record(session, audited_by, AuditAction.USER_UPDATE, "user", user_id, detail)
    await session.commit()
    forget_user(user_id)
    await session.refresh(user)
    return user


async def list_tokens(session: AsyncSession, user_id: str | None = None) -> Sequence[tuple[ApiToken, User]]:
    query = select(ApiToken, User).join(User, User.id == ApiToken.user_id).order_by(ApiToken.created_at)
    if user_id is not None:
        query = query.where(ApiToken.user_id == user_id)
    return [(token, user) for token, user in (await session.execute(query)).all()]


async def issue_token(
    session: AsyncSession, user_id: str, name: str, audited_by: Principal | None = None
) -> tuple[ApiToken, User, str]:
    """A new token for an active user; the raw value is returned here and never again."""
    user = await get_user(session, user_id)
    if not user.is_active:
        raise ConflictError(f"user {user.username} is deactivated")
    token, raw = await _add_token(session, user, name)
    if audited_by is not None:
        detail = {"name": name, "user_id": user.id, "username": user.username, "snippet": token.snippet}
        record(session, audited_by, AuditAction.TOKEN_CREATE, "token", token.id, detail)
    await session.commit()
    return token, user, raw


async def revoke_token(
    session: AsyncSession, token_id: str, audited_by: Principal | None = None
) -> tuple[ApiToken, User]:
    """Idempotent: revoking twice keeps the first revocation time."""
    row = (
        await session.execute(
            select(ApiToken, User).join(User, User.id == ApiToken.user_id).where(ApiToken.id == token_id)
        )
    ).first()
    if row is None:
        raise NotFoundError(f"token {token_id} not found")
    token, user = row
    if token.revoked_at is None:
        await session.execute(
            update(ApiToken)
            .where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
            .execution_options(synchronize_session=False)
        )
        if audited_by is not None:
            detail = {
                "name": token.name,
                "user_id": user.id,
                "username": user.username,
                "snippet": token.snippet,
            }
            record(session, audited_by, AuditAction.TOKEN_REVOKE, "token", token_id, detail)
        await session.commit()
        forget_digest(token.token_hash)
        await session.refresh(token)
    return token, user
