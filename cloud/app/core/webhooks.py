"""Webhooks: where notifications go (docs/alerts.md). Admins create, change and delete them; a
delivery is signed with the webhook's secret (cloud.app.core.webhook_delivery), which is generated
when not given and shown only in the answer to the creation."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.auth import Principal
from cloud.app.core.audit import AuditAction, record
from cloud.app.db.models import Webhook
from cloud.app.errors import ConflictError, NotFoundError
from cloud.app.schemas.alerts import WebhookCreate, WebhookUpdate
from common.ids import new_id


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


async def list_webhooks(session: AsyncSession) -> Sequence[Webhook]:
    return (await session.execute(select(Webhook).order_by(Webhook.created_at, Webhook.id))).scalars().all()


async def get_webhook(session: AsyncSession, webhook_id: str) -> Webhook:
    hook = await session.get(Webhook, webhook_id)
    if hook is None:
        raise NotFoundError(f"webhook {webhook_id} not found")
    return hook


async def create_webhook(session: AsyncSession, body: WebhookCreate, admin: Principal) -> Webhook:
    hook = Webhook(
        id=new_id("whk"),
        name=body.name,
        url=str(body.url),
        secret=body.secret or new_webhook_secret(),
        events=sorted({kind.value for kind in body.events}),
        enabled=body.enabled,
        created_by=admin.user_id,
    )
    session.add(hook)
    record(
        session, admin, AuditAction.WEBHOOK_CREATE, "webhook", hook.id, {"name": hook.name, "url": hook.url}
    )
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise ConflictError(f"a webhook named {body.name!r} exists already") from None
    return hook


async def update_webhook(
    session: AsyncSession, webhook_id: str, body: WebhookUpdate, admin: Principal
) -> Webhook:
    hook = await get_webhook(session, webhook_id)
    if body.url is not None:
        hook.url = str(body.url)
    if body.events is not None:
        hook.events = sorted({kind.value for kind in body.events})
    if body.enabled is not None:
        hook.enabled = body.enabled
    record(session, admin, AuditAction.WEBHOOK_UPDATE, "webhook", hook.id, body.model_dump(mode="json"))
    await session.commit()
    return hook


async def delete_webhook(session: AsyncSession, webhook_id: str, admin: Principal) -> None:
    """Its pending deliveries go with it (nothing would send them any more)."""
    hook = await get_webhook(session, webhook_id)
    record(session, admin, AuditAction.WEBHOOK_DELETE, "webhook", hook.id, {"name": hook.name})
    await session.delete(hook)
    await session.commit()
