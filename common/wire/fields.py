"""Field types shared by wire models (the cloud's request and response models, and the contracts in
common/wire that its clients parse).

Inbound values must be storable by both databases: text without NUL characters (PostgreSQL rejects them) or
lone surrogates (they cannot be encoded as UTF-8), and JSON without NaN or infinities (not JSON).
Request bodies decode `\\u0000`, `\\ud800` and `NaN` into such values, so they are refused at the
boundary with a 400 instead of failing in the database driver. The rules (and their limits) are
common.validation's, which the edge applies too."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

from common import validation
from common.clock import as_utc as as_utc
from common.wire.device_api import Roi


def check_text(value: str) -> str:
    return validation.check_text(value, "text")


def check_json(value: Any) -> Any:
    """The same rule for every key and string inside a JSON value, nested at most
    common.validation.MAX_JSON_DEPTH deep."""
    return validation.check_json(value)


StorableStr = Annotated[str, AfterValidator(check_text)]
StorableJson = Annotated[dict[str, Any], AfterValidator(check_json)]
# Inbound boxes (labels, review answers): common.validation's ROI rules, so a bad box is a 400 that
# says which one and why; x and y may be left out and are recomputed.
RoisIn = Annotated[list[Roi] | None, BeforeValidator(validation.check_rois)]


def json_size(value: Any) -> int:
    return len(json.dumps(value))


# Outbound times: always timezone-aware, whichever database they came from.
UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]


# Our ids (`usr_…`, `tok_…`, `trj_…`, `det_…`): prefix and base62 body. Path and query parameters that
# name a row use it, so that nothing unstorable reaches a lookup.
ID_PATTERN = r"^[A-Za-z0-9_-]+$"
