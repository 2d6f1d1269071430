"""Callers and what routes require of them.

Role          who                                                         may use
DEVICE        a cloud device token, or one listed in the local token file  the device API, readiness, edge info
ADMIN         EDGE_ADMIN_TOKEN, a cloud admin token, a local admin token    the above, and edge config, status,
                                                                            metrics, outbox
INTERNAL      the edge's own services (x-internal-token)                    everything, the internal routes too
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    DEVICE = "device"
    ADMIN = "admin"
    INTERNAL = "internal"


class Access(StrEnum):
    """What a route needs; the README's "Edge security" section has the matrix."""

    DEVICE = "device"
    OPERATOR = "operator"
    INTERNAL = "internal"


_ALLOWED: dict[Access, frozenset[Role]] = {
    Access.DEVICE: frozenset(Role),
    Access.OPERATOR: frozenset({Role.ADMIN, Role.INTERNAL}),
    Access.INTERNAL: frozenset({Role.INTERNAL}),
}


@dataclass(frozen=True)
class Principal:
    role: Role
    username: str
    email: str
    # Where the verdict came from: "cloud", "local token file", "edge admin token", "internal".
    source: str

    def may(self, access: Access) -> bool:
        return self.role in _ALLOWED[access]


INTERNAL_PRINCIPAL = Principal(
    Role.INTERNAL, "edge-internal", "edge-internal@intellioptics.local", "internal"
)
ADMIN_PRINCIPAL = Principal(Role.ADMIN, "edge-admin", "edge-admin@intellioptics.local", "edge admin token")
