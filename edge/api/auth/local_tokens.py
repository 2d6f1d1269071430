"""Device (and operator) tokens this edge accepts without asking any cloud, by sha256 only.

The file (`EDGE_LOCAL_TOKENS_FILE`, default `<EDGE_DATA_DIR>/tokens.json`) is managed with
`python -m edge.api.tokens add|list|remove`; edge-api notices a change within a second, no restart:

    {"tokens": [{"name": "line-3", "sha256": "<hex>", "role": "device", "created_at": "..."}]}
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from common.wire.device_api import utc_now_iso
from edge.api.auth.principal import Role

log = logging.getLogger("edge.auth")

LOCAL_ROLES = (Role.DEVICE, Role.ADMIN)
# How often the file's modification time is looked at (once per request at most that often).
RECHECK_S = 1.0


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class LocalTokensError(ValueError):
    """The token file cannot be read or names a token twice."""


@dataclass(frozen=True)
class LocalToken:
    name: str
    sha256: str
    role: str = Role.DEVICE.value
    created_at: str = ""


def read_tokens(path: Path) -> list[LocalToken]:
    """The tokens in the file; none when it does not exist."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise LocalTokensError(f"{path}: {exc}") from None
    entries = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise LocalTokensError(f'{path}: expected {{"tokens": [...]}}')
    tokens = []
    for i, entry in enumerate(entries):
        try:
            token = LocalToken(
                name=str(entry["name"]),
                sha256=str(entry["sha256"]).lower(),
                role=str(entry.get("role", Role.DEVICE.value)),
                created_at=str(entry.get("created_at", "")),
            )
        except (KeyError, TypeError, AttributeError):
            raise LocalTokensError(f"{path}: tokens[{i}] needs a name and a sha256") from None
        if len(token.sha256) != 64 or any(c not in "0123456789abcdef" for c in token.sha256):
            raise LocalTokensError(f"{path}: tokens[{i}].sha256 is not a sha256 in hex")
        if token.role not in LOCAL_ROLES:
            raise LocalTokensError(f"{path}: tokens[{i}].role must be device or admin")
        tokens.append(token)
    return tokens


def write_tokens(path: Path, tokens: list[LocalToken]) -> None:
    """Replace the file atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tokens-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump({"tokens": [asdict(t) for t in tokens]}, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def add_token(path: Path, token: str, name: str, role: Role = Role.DEVICE) -> LocalToken:
    """List a token (by its hash) under a name; a name or token already listed is refused."""
    tokens = read_tokens(path)
    digest = token_digest(token)
    if any(t.name == name for t in tokens):
        raise LocalTokensError(f"a token named {name!r} is already listed")
    if any(t.sha256 == digest for t in tokens):
        raise LocalTokensError("this token is already listed")
    added = LocalToken(name=name, sha256=digest, role=role.value, created_at=utc_now_iso())
    write_tokens(path, [*tokens, added])
    return added


def remove_token(path: Path, name: str) -> bool:
    tokens = read_tokens(path)
    kept = [t for t in tokens if t.name != name]
    if len(kept) == len(tokens):
        return False
    write_tokens(path, kept)
    return True


class LocalTokenBook:
    """The file's tokens by hash, reloaded when the file changes."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._by_digest: dict[str, LocalToken] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked_at = -RECHECK_S
        self.error: str | None = None
        self._reload()

    def lookup(self, digest: str) -> LocalToken | None:
        now = self._clock()
        if now - self._checked_at >= RECHECK_S:
            self._checked_at = now
            self._reload()
        return self._by_digest.get(digest)

    def __len__(self) -> int:
        return len(self._by_digest)

    def _reload(self) -> None:
        try:
            stat = self.path.stat()
            stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = None
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            tokens = read_tokens(self.path)
        except LocalTokensError as exc:
            # A broken file accepts nobody rather than somebody by mistake; said once per change.
            self.error = str(exc)
            self._by_digest = {}
            log.error("local token file not used", extra={"fields": {"error": self.error}})
            return
        self.error = None
        self._by_digest = {t.sha256: t for t in tokens}
        if stamp is not None:
            log.info(
                "local token file loaded", extra={"fields": {"path": str(self.path), "tokens": len(tokens)}}
            )
