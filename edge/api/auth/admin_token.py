"""The edge operator's token: `EDGE_ADMIN_TOKEN`, else the first line of `EDGE_ADMIN_TOKEN_FILE`
(default `<EDGE_DATA_DIR>/admin-token`), which the first start creates (mode 0600), so an edge box
always has an operator credential that only someone on the box can read."""

from __future__ import annotations

import logging

from common.internal_auth import load_or_create_token
from edge.api.settings import EdgeSettings

log = logging.getLogger("edge.auth")

# The SDK accepts a token whose first 20 characters are [A-Za-z0-9_].
ADMIN_TOKEN_PREFIX = "io_edgeadmin_"


def resolve_admin_token(settings: EdgeSettings) -> str:
    if settings.admin_token:
        return settings.admin_token
    path = settings.admin_token_path
    existed = path.exists()
    token = load_or_create_token(path, prefix=ADMIN_TOKEN_PREFIX)
    if not existed:
        log.info("edge operator token created", extra={"fields": {"path": str(path)}})
    return token
