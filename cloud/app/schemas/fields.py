"""Field types shared by the cloud's request and response models: common.wire.fields, under the names
the cloud's modules import."""

from __future__ import annotations

from common.wire.fields import ID_PATTERN as ID_PATTERN
from common.wire.fields import RoisIn as RoisIn
from common.wire.fields import StorableJson as StorableJson
from common.wire.fields import StorableStr as StorableStr
from common.wire.fields import UtcDatetime as UtcDatetime
from common.wire.fields import as_utc as as_utc
from common.wire.fields import check_json as check_json
from common.wire.fields import check_text as check_text
from common.wire.fields import json_size as json_size
