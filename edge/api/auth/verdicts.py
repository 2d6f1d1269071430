"""The cloud's verdicts on device tokens, kept by token sha256: in memory (LRU, bounded) and, for the
tokens it accepted, in the edge's SQLite store, so a camera keeps working through a cloud outage and
through an edge restart during one.

A verdict past `expires_at` is stale, not void: the authenticator still honours an accepted token and
re-asks the cloud in the background; a refusal past its expiry is forgotten and asked again.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from edge.api.auth.principal import Principal, Role
from edge.api.core.store import EdgeStore, VerdictRow


@dataclass(frozen=True)
class Verdict:
    """Accepted (`role` set) or refused (`status`, `detail`)."""

    role: Role | None
    username: str
    email: str
    checked_at: float
    expires_at: float
    status: int = 401
    detail: str = ""

    @property
    def accepted(self) -> bool:
        return self.role is not None

    def principal(self) -> Principal:
        assert self.role is not None
        return Principal(self.role, self.username, self.email, "cloud")


class VerdictCache:
    def __init__(self, store: EdgeStore | None, max_entries: int) -> None:
        self._store = store
        self._max = max_entries
        self._entries: OrderedDict[str, Verdict] = OrderedDict()

    async def load(self) -> int:
        """The accepted tokens the store kept; how many."""
        if self._store is None:
            return 0
        store = self._store
        rows = await store.run(lambda: store.load_verdicts(self._max))
        for row in rows:
            try:
                role = Role(row.role)
            except ValueError:
                continue
            self._remember(
                row.token_sha256, Verdict(role, row.username, row.email, row.checked_at, row.expires_at)
            )
        return len(rows)

    def get(self, digest: str) -> Verdict | None:
        verdict = self._entries.get(digest)
        if verdict is not None:
            self._entries.move_to_end(digest)
        return verdict

    async def put(self, digest: str, verdict: Verdict) -> None:
        """Remember a verdict; an accepted one is also stored, a refused one removed from the store."""
        self._remember(digest, verdict)
        if self._store is None:
            return
        store = self._store
        if verdict.role is not None:
            row = VerdictRow(
                digest,
                verdict.role.value,
                verdict.username,
                verdict.email,
                verdict.checked_at,
                verdict.expires_at,
            )
            await store.run(lambda: store.save_verdict(row, self._max))
        else:
            await store.run(lambda: store.forget_verdict(digest))

    def _remember(self, digest: str, verdict: Verdict) -> None:
        self._entries[digest] = verdict
        self._entries.move_to_end(digest)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
