"""edge-api's clients to the box's other services that /status and /metrics ask (streams, the
updater): one keep-alive client each for the life of the process, not one per request. Neither of
them calls edge-api's /status back (the updater reads /internal/facts), so /status stays the only
aggregator and no call comes round in a loop."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from common.internal_auth import internal_headers
from edge.api.settings import EdgeSettings


def _client(url: str, timeout_s: float, token: str) -> httpx.AsyncClient | None:
    if not url:
        return None
    return httpx.AsyncClient(
        base_url=url,
        timeout=timeout_s,
        headers=internal_headers(token),
        limits=httpx.Limits(max_connections=4, max_keepalive_connections=2),
        trust_env=False,
    )


@dataclass
class Peers:
    streams: httpx.AsyncClient | None
    updater: httpx.AsyncClient | None

    @classmethod
    def open(cls, settings: EdgeSettings, internal_token: str) -> Peers:
        """A client for each peer whose URL is set (an empty URL: that service is not run here)."""
        return cls(
            streams=_client(settings.streams_url, settings.streams_timeout_s, internal_token),
            updater=_client(settings.updater_url, settings.updater_timeout_s, internal_token),
        )

    async def close(self) -> None:
        for client in (self.streams, self.updater):
            if client is not None:
                await client.aclose()
