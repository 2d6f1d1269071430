"""What our services quote from another service's error answer: its JSON `detail` (FastAPI's and
ours), else the start of the body, cut short so a log line or an error message stays one line."""

from __future__ import annotations

import json

import httpx
from pydantic import ValidationError

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


def first_validation_error(exc: ValidationError, root: str = "") -> str:
    """ "where: what" of a pydantic error's first problem, one line for a 400 or a log; `root` names
    the place when the whole document is at fault."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or root
    return f"{where}: {first['msg']}" if where else str(first["msg"])
