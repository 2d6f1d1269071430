"""Browser hardening headers on every response of the cloud (pure ASGI).

The review pages load only their own scripts, styles and images (no inline code: the templates carry
none), may not be framed (the labeling page answers with one key press, an easy target for
clickjacking), and responses are never content-sniffed. FastAPI's interactive docs pull Swagger UI and
ReDoc from a CDN with an inline bootstrap script, so those few pages get a policy that allows exactly
that, and are still not frameable.
"""

from __future__ import annotations

from common.http import ASGIApp, Message, Receive, Scope, Send

PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'self'; form-action 'self'"
)
_CDN = "https://cdn.jsdelivr.net"
_FONTS = "https://fonts.googleapis.com"
DOCS_POLICY = (
    f"default-src 'self'; img-src 'self' data: https:; font-src 'self' https://fonts.gstatic.com; "
    f"style-src 'self' 'unsafe-inline' {_CDN} {_FONTS}; script-src 'self' 'unsafe-inline' {_CDN}; "
    "worker-src 'self' blob:; connect-src 'self'; object-src 'none'; frame-ancestors 'none'; "
    "base-uri 'self'; form-action 'self'"
)
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
HSTS = b"max-age=31536000"


class SecurityHeaders:
    """Adds the headers to each response start, leaving any a route set itself."""

    def __init__(self, app: ASGIApp, https: bool) -> None:
        self.app = app
        common = [
            (b"x-frame-options", b"DENY"),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
        ]
        if https:
            common.append((b"strict-transport-security", HSTS))
        self.page_headers = [(b"content-security-policy", PAGE_POLICY.encode()), *common]
        self.docs_headers = [(b"content-security-policy", DOCS_POLICY.encode()), *common]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.docs_headers if scope.get("path") in DOCS_PATHS else self.page_headers

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers.extend(item for item in extra if item[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
