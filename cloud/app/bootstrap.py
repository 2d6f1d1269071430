"""First start: when there are no users, create an admin, a reviewer and a device API token, print
them once (or, with CLOUD_BOOTSTRAP_PRINT_SECRETS=false, only the file that holds them), and write
the token where scripts look for it. Also a `trainer` service account (role
`trainer`: it runs training jobs and nothing else; no password) whose token goes only into
`trainer_token_path`, where the trainer reads it."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from cloud.app.core.users import create_token, create_user
from cloud.app.db.models import Role, User
from cloud.app.security import new_api_token, new_password
from cloud.app.settings import CloudSettings

log = logging.getLogger("cloud.bootstrap")

CREDENTIALS_FILE = "credentials.json"


@dataclass(frozen=True)
class Credentials:
    admin_username: str
    admin_password: str
    reviewer_username: str
    reviewer_password: str
    api_token: str
    trainer_token: str = ""


async def seed_if_empty(session: AsyncSession, settings: CloudSettings) -> Credentials | None:
    if (await session.execute(select(func.count()).select_from(User))).scalar_one():
        return None
    creds = Credentials(
        admin_username="admin",
        admin_password=settings.bootstrap_admin_password or new_password(),
        reviewer_username="reviewer",
        reviewer_password=settings.bootstrap_reviewer_password or new_password(),
        api_token=settings.bootstrap_api_token or new_api_token(),
    )
    await create_user(session, creds.admin_username, Role.ADMIN, creds.admin_password)
    await create_user(session, creds.reviewer_username, Role.REVIEWER, creds.reviewer_password)
    device = await create_user(session, "device", Role.DEVICE)
    await create_token(session, device, "device (first start)", creds.api_token)
    if settings.trainer_token_path is not None:
        trainer = await create_user(session, "trainer", Role.TRAINER)
        creds = replace(creds, trainer_token=new_api_token())
        await create_token(session, trainer, "trainer (first start)", creds.trainer_token)
    await session.commit()
    return creds


def publish(creds: Credentials, settings: CloudSettings) -> None:
    """Keep a private copy beside the database and the token where scripts read it; print them once,
    or, with `bootstrap_print_secrets` off (the images), only where they are."""
    credentials_path = settings.data_dir / CREDENTIALS_FILE
    _write_private(credentials_path, json.dumps(asdict(creds), indent=2) + "\n")
    if settings.api_token_file:
        _write_private(Path(settings.api_token_file), creds.api_token + "\n")
    if settings.trainer_token_path is not None and creds.trainer_token:
        _write_private(settings.trainer_token_path, creds.trainer_token + "\n")
    if not settings.bootstrap_print_secrets:
        print(
            "IntelliOptics cloud: first start, accounts created (admin, reviewer, a device API token); "
            f"their passwords and the token are in {credentials_path}"
            + (f", the token also in {settings.api_token_file}" if settings.api_token_file else ""),
            flush=True,
        )
        return
    print(
        "IntelliOptics cloud: first start, accounts created\n"
        f"  admin     {creds.admin_username} / {creds.admin_password}\n"
        f"  reviewer  {creds.reviewer_username} / {creds.reviewer_password}\n"
        f"  API token {creds.api_token}"
        + (f"  (written to {settings.api_token_file})" if settings.api_token_file else ""),
        flush=True,
    )


def _write_private(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(content)
