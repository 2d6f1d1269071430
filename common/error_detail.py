"""What our services quote from another service's error answer: its JSON `detail` (FastAPI's and
ours), else the start of the body, cut short so a log line or an error message stays one line."""

from __future__ import annotations

import json

import httpx

MAX_DETAIL_CHARS = 300


def detail_of_body(body: bytes, limit: int = MAX_DETAIL_CHARS) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:limit].decode("utf-8", "replace")
    detail = data.get("detail", data) if isinstance(data, dict) else data
    text = detail if isinstance(detail, str) else json.dumps(detail)
    return text[:limit]


def error_detail(response: httpx.Response, limit: int = MAX_DETAIL_CHARS) -> str:
    return detail_of_body(response.content, limit)
