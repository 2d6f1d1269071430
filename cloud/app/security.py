"""Secrets at rest: API tokens and session tokens as sha256 (they are long and random), passwords
with scrypt (they are not)."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from common.ids import new_id

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def new_api_token() -> str:
    """43 url-safe characters after an `io_` prefix; the SDK needs its first 20 to be [A-Za-z0-9_]."""
    while True:
        token = "io_" + secrets.token_urlsafe(32)
        if all(c.isalnum() or c == "_" for c in token[:20]):
            return token


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_session_token() -> str:
    return secrets.token_urlsafe(32)


def new_password() -> str:
    return secrets.token_urlsafe(12)


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str | None) -> bool:
    if not stored or not stored.startswith("scrypt$"):
        return False
    _, salt_hex, digest_hex = stored.split("$", 2)
    digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt_hex), dklen=32, **_SCRYPT)
    return hmac.compare_digest(digest.hex(), digest_hex)


def new_user_id() -> str:
    return new_id("usr")


def new_token_id() -> str:
    return new_id("tok")
