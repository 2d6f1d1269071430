"""Bodies of the administration API: users, API tokens and deleted detectors. A token's secret
appears only in the answer to its creation."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from cloud.app.db.models import ApiToken, Role, User
from cloud.app.schemas.device import DetectorName
from cloud.app.schemas.fields import ID_PATTERN, StorableStr, UtcDatetime


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(
        min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$", examples=["ana"]
    )
    role: Role = Field(examples=["reviewer"])
    password: StorableStr | None = Field(
        default=None,
        min_length=8,
        max_length=200,
        description="required for admin and reviewer (they sign in to the web pages); refused for device "
        "and trainer (tokens only)",
    )
    email: StorableStr = Field(default="", max_length=200)


class UserUpdate(BaseModel):
    """A role change: people (admin, reviewer) and token-only accounts (device, trainer) keep their
    kind, so a role is offered only within it."""

    model_config = ConfigDict(extra="forbid")

    role: Role = Field(examples=["admin"])


class UserPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    username: str
    email: str
    role: Role
    is_active: bool
    created_at: UtcDatetime


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(max_length=40, pattern=ID_PATTERN, examples=["usr_2Z3Yb8kq0cJ1mHq3T9rWnXbV5aD"])
    name: StorableStr = Field(min_length=1, max_length=200, examples=["line 3 camera"])


class TokenPublic(BaseModel):
    """A token without its secret: the snippet (its first characters) is enough to recognise it."""

    id: str
    name: str
    user_id: str
    username: str
    snippet: str
    created_at: UtcDatetime
    last_used_at: UtcDatetime | None
    revoked_at: UtcDatetime | None

    @classmethod
    def of(cls, token: ApiToken, user: User) -> TokenPublic:
        return cls(
            id=token.id,
            name=token.name,
            user_id=token.user_id,
            username=user.username,
            snippet=token.snippet,
            created_at=token.created_at,
            last_used_at=token.last_used_at,
            revoked_at=token.revoked_at,
        )


class TokenCreated(TokenPublic):
    token: str = Field(description="the secret: shown in this answer only")

    @classmethod
    def issued(cls, token: ApiToken, user: User, raw: str) -> TokenCreated:
        return cls(**TokenPublic.of(token, user).model_dump(), token=raw)


class DeletedDetector(BaseModel):
    """A soft-deleted detector: restorable until `purge_after`, when the worker removes it for good."""

    id: str
    name: str = Field(description="the name it had (it may belong to a newer detector by now)")
    query: str
    mode: str
    deleted_at: UtcDatetime
    deleted_by: str | None = Field(description="the user who deleted it")
    purge_after: UtcDatetime


class DetectorRestore(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: DetectorName | None = Field(
        default=None, description="restore under this name (its own was taken since); default: its own"
    )
