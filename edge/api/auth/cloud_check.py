"""Asks the cloud who a device token belongs to: `GET /device-api/v1/me` with the caller's token.

200 names a device (an admin when the cloud says `is_superuser`, or `role: admin`); 401 and 403 are
the cloud's refusal; anything else (unreachable, 5xx, a malformed answer) means it could not say.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import httpx

from edge.api.auth.principal import Role

ME_PATH = "/device-api/v1/me"


@dataclass(frozen=True)
class CloudAnswer:
    kind: Literal["accepted", "refused", "unverifiable"]
    role: Role | None = None
    username: str = ""
    email: str = ""
    status: int = 401
    detail: str = ""


class CloudTokenCheck:
    def __init__(self, http: httpx.AsyncClient, timeout_s: float) -> None:
        self._http = http
        self._timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, 2.0))

    async def ask(self, token: str) -> CloudAnswer:
        try:
            response = await self._http.get(ME_PATH, headers={"x-api-token": token}, timeout=self._timeout)
        except httpx.HTTPError as exc:
            return CloudAnswer("unverifiable", detail=f"the cloud is unreachable ({type(exc).__name__})")
        if response.status_code in (401, 403):
            return CloudAnswer(
                "refused",
                status=response.status_code,
                detail="the cloud does not accept this token"
                if response.status_code == 401
                else "this token's role may not use the device API",
            )
        if response.status_code != 200:
            return CloudAnswer("unverifiable", detail=f"the cloud answered {response.status_code}")
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("username"), str):
            return CloudAnswer("unverifiable", detail="the cloud sent a malformed answer")
        role_name = data.get("role")
        if role_name not in (None, Role.DEVICE.value, Role.ADMIN.value):
            return CloudAnswer("refused", status=403, detail="this token's role may not use the device API")
        admin = role_name == Role.ADMIN.value or data.get("is_superuser") is True
        return CloudAnswer(
            "accepted",
            role=Role.ADMIN if admin else Role.DEVICE,
            username=data["username"],
            email=str(data.get("email") or ""),
        )
