"""Camera passwords in the edge config stay on the edge.

Every answer shows a stream URL as `rtsp://user:***@host` (common.edge_config.redact_url). A config
sent back with such a URL (what `GET /edge-config` returned, edited) keeps the stored URL of the
stream with that name, when the two agree on everything but the password; any other `***` password
is refused, so a redacted URL never replaces a working one.
"""

from __future__ import annotations

from typing import Any

from common.edge_config import EdgeConfig, redact_url

REDACTED = ":***@"


class RedactedSecretError(ValueError):
    """A stream URL carries the redacted password and matches no stored stream."""


def redacted_config(config: EdgeConfig) -> dict[str, Any]:
    data = config.model_dump(mode="json")
    for stream in data.get("streams", []):
        stream["url"] = redact_url(stream["url"])
    return data


def restore_secrets(data: object, current: EdgeConfig) -> object:
    """`data` (a PUT body) with each redacted stream URL replaced by the stored one it stands for."""
    if not isinstance(data, dict) or not isinstance(data.get("streams"), list):
        return data
    restored = []
    for i, stream in enumerate(data["streams"]):
        url = stream.get("url") if isinstance(stream, dict) else None
        if not isinstance(url, str) or REDACTED not in url:
            restored.append(stream)
            continue
        stored = current.stream(str(stream.get("name")))
        if stored is None or redact_url(stored.url) != url:
            raise RedactedSecretError(
                f"streams.{i}.url: the password is redacted (***) and no stored stream of this name has "
                "this URL; send the full URL"
            )
        restored.append({**stream, "url": stored.url})
    return {**data, "streams": restored}
