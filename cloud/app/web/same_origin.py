"""Cross-site request refusal for cookie sessions (pure ASGI).

A browser attaches the session cookie to a form another site posts to us, so a state-changing request
(POST, PUT, PATCH, DELETE) that the cookie would authenticate must show it comes from our own pages:
its `Origin` (or, when a browser sent none, its `Referer`) must be this cloud's public URL or the host
the request was sent to. Otherwise it is refused with 403 before any route runs.

Requests with an `x-api-token` are authenticated by the token alone (the cookie is never consulted)
and pass untouched; so do requests without the cookie, except that a foreign `Origin` is refused on
them too, which keeps other sites from logging a browser in to an account of theirs. `/login` and
`/logout` need no Origin when the client sends none: neither acts on the session's behalf.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from starlette.requests import cookie_parser

from common.http import ASGIApp, Receive, Scope, Send

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def origin_of(url: str) -> tuple[str, str] | None:
    """(scheme, host[:port]) of a URL, lowercased and without the scheme's default port."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and str(port) != _DEFAULT_PORTS[parts.scheme]:
        host = f"{host}:{port}"
    return parts.scheme, host


class SameOriginGuard:
    def __init__(
        self,
        app: ASGIApp,
        public_url: str,
        session_cookie: str,
        no_origin_ok: frozenset[str] = frozenset({"/login", "/logout"}),
    ) -> None:
        self.app = app
        self.public = origin_of(public_url)
        self.session_cookie = session_cookie
        self.no_origin_ok = no_origin_ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            refusal = self.refusal(scope)
            if refusal is not None:
                await _forbidden(send, refusal)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> str | None:
        """Why this request is refused, or None when it may go on."""
        headers: dict[bytes, bytes] = {}
        for name, value in scope.get("headers", ()):
            headers.setdefault(name, value)
        if headers.get(b"x-api-token", b"").strip():
            return None
        claimed = headers.get(b"origin") or headers.get(b"referer")
        if claimed is not None:
            if self._ours(claimed.decode("latin-1"), headers.get(b"host", b"").decode("latin-1")):
                return None
            return "cross-site request refused: its Origin is not this cloud"
        cookies = cookie_parser(headers.get(b"cookie", b"").decode("latin-1"))
        if self.session_cookie not in cookies or scope.get("path") in self.no_origin_ok:
            return None
        return (
            "cross-site request refused: a request signed in with the session cookie must send an "
            "Origin or Referer header (browsers do; scripts should use the x-api-token header)"
        )

    def _ours(self, claimed: str, host: str) -> bool:
        origin = origin_of(claimed)
        if origin is None:
            return False  # "null" (sandboxed frames, privacy redirects) or garbage
        if origin == self.public:
            return True
        # The Host a browser sent the request to, compared under the Origin's own scheme.
        return bool(host) and origin == origin_of(f"{origin[0]}://{host}")


async def _forbidden(send: Send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})
