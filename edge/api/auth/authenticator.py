"""One decision per request: who is calling (edge.api.auth.principal), or why they are refused.

In order: the internal token (`x-internal-token`, the edge's own services); then the token a caller
sends as `x-api-token` (or `Authorization: Bearer`, for scrapers): the edge operator's token, a token
of the local token file, the cached verdict of the cloud, and last the cloud itself.

- The cloud is asked once per token at a time (concurrent requests wait for the same answer) and
  its verdict is kept by sha256: an accepted token for `ttl_s`, after which it keeps working while
  the cloud is asked again in the background, and forever while the cloud is unreachable; a refused
  one for `negative_ttl_s`.
- A token never seen, with the cloud unreachable, is refused (401) and not asked about again for
  `UNVERIFIABLE_RETRY_S`: the edge cannot tell a camera from a guess.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable

from common.http import Scope
from common.internal_auth import INTERNAL_TOKEN_HEADER, scope_header, token_matches
from edge.api.auth.cloud_check import CloudAnswer, CloudTokenCheck
from edge.api.auth.local_tokens import LocalTokenBook, token_digest
from edge.api.auth.principal import ADMIN_PRINCIPAL, INTERNAL_PRINCIPAL, Principal, Role
from edge.api.auth.verdicts import Verdict, VerdictCache
from edge.api.errors import ForbiddenError, UnauthorizedError

log = logging.getLogger("edge.auth")

UNVERIFIABLE_RETRY_S = 5.0
# While the cloud cannot be asked, a stale accepted verdict is re-asked about this often.
REFRESH_RETRY_S = 30.0

_API_TOKEN = b"x-api-token"
_AUTHORIZATION = b"authorization"
_INTERNAL = INTERNAL_TOKEN_HEADER.encode("latin-1")
NO_TOKEN = "send your device token in the x-api-token header"


def presented_token(scope: Scope) -> str | None:
    """The caller's token: `x-api-token`, else a bearer token in `Authorization`."""
    token = scope_header(scope, _API_TOKEN)
    if token:
        return token
    authorization = scope_header(scope, _AUTHORIZATION)
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


class Authenticator:
    def __init__(
        self,
        *,
        internal_token: str,
        admin_token: str,
        local: LocalTokenBook,
        cache: VerdictCache,
        cloud: CloudTokenCheck,
        ttl_s: float,
        negative_ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._internal = internal_token
        self._admin = admin_token.encode("utf-8")
        self._local = local
        self._cache = cache
        self._cloud = cloud
        self._ttl = ttl_s
        self._negative_ttl = negative_ttl_s
        self._clock = clock
        self._inflight: dict[str, asyncio.Task[Verdict]] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def authenticate_scope(self, scope: Scope) -> Principal:
        return await self.authenticate(presented_token(scope), scope_header(scope, _INTERNAL))

    async def authenticate(self, api_token: str | None, internal_token: str | None = None) -> Principal:
        if token_matches(self._internal, internal_token):
            return INTERNAL_PRINCIPAL
        if not api_token:
            raise UnauthorizedError(NO_TOKEN)
        if self._admin and hmac.compare_digest(self._admin, api_token.encode("utf-8")):
            return ADMIN_PRINCIPAL
        digest = token_digest(api_token)
        local = self._local.lookup(digest)
        if local is not None:
            return Principal(Role(local.role), local.name, f"{local.name}@edge.local", "local token file")
        now = self._clock()
        verdict = self._cache.get(digest)
        if verdict is not None and verdict.accepted:
            if now >= verdict.expires_at:
                self._refresh_in_background(api_token, digest)
            return verdict.principal()
        if verdict is None or now >= verdict.expires_at:
            verdict = await self._ask(api_token, digest)
        return _principal_or_refuse(verdict)

    async def _ask(self, token: str, digest: str) -> Verdict:
        """The cloud's verdict, once per token however many requests wait for it."""
        task = self._inflight.get(digest)
        if task is None:
            task = asyncio.ensure_future(self._verify(token, digest))
            self._inflight[digest] = task
            task.add_done_callback(lambda _: self._inflight.pop(digest, None))
        return await asyncio.shield(task)

    async def _verify(self, token: str, digest: str) -> Verdict:
        answer = await self._cloud.ask(token)
        now = self._clock()
        previous = self._cache.get(digest)
        verdict = self._verdict(answer, now, previous)
        await self._cache.put(digest, verdict)
        if answer.kind == "refused" and previous is not None and previous.accepted:
            log.warning("device token revoked by the cloud", extra={"fields": {"user": previous.username}})
        return verdict

    def _verdict(self, answer: CloudAnswer, now: float, previous: Verdict | None) -> Verdict:
        if answer.kind == "accepted":
            return Verdict(answer.role, answer.username, answer.email, now, now + self._ttl)
        if answer.kind == "refused":
            return Verdict(None, "", "", now, now + self._negative_ttl, answer.status, answer.detail)
        if previous is not None and previous.accepted:
            # Kept through the outage; asked again a little later.
            return Verdict(
                previous.role, previous.username, previous.email, previous.checked_at, now + REFRESH_RETRY_S
            )
        detail = (
            f"the cloud could not verify this token ({answer.detail}); with the cloud unreachable the edge "
            "accepts only tokens it has seen before or that are listed in its local token file"
        )
        return Verdict(None, "", "", now, now + UNVERIFIABLE_RETRY_S, 401, detail)

    def _refresh_in_background(self, token: str, digest: str) -> None:
        if digest in self._inflight:
            return

        async def refresh() -> None:
            try:
                await self._ask(token, digest)
            except Exception:
                log.exception("device token refresh failed")

        task = asyncio.ensure_future(refresh())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for task in [*self._background, *self._inflight.values()]:
            task.cancel()
        for task in [*self._background, *self._inflight.values()]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _principal_or_refuse(verdict: Verdict) -> Principal:
    if verdict.accepted:
        return verdict.principal()
    if verdict.status == 403:
        raise ForbiddenError(verdict.detail or "this token may not use this edge")
    raise UnauthorizedError(verdict.detail or "unknown token")
