"""Passwords in URLs (`rtsp://user:pass@camera`) never reach a log line.

The stream code already logs redacted URLs (common.edge_config.redact_url); this filter is the net
under it, for anything else that might quote a URL: exception messages, third-party libraries.
"""

from __future__ import annotations

import logging
import re
from typing import Any

_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):(?P<password>[^@/\s]+)@")


def redact_text(text: str) -> str:
    """Every `scheme://user:password@` in `text` as `scheme://user:***@`."""
    if "@" not in text:
        return text
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}:***@" if m["password"] != "***" else m[0], text)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    return value


class SecretRedactingFilter(logging.Filter):
    """Rewrites the message, its arguments, our structured `fields` and the exception text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            record.fields = _redact_value(fields)
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            safe = redact_text(text)
            if safe != text:
                # Our JSON formatter writes `fields` as they are and the traceback only from exc_info.
                current = getattr(record, "fields", None)
                record.fields = {**(current if isinstance(current, dict) else {}), "exc": safe}
                record.exc_info, record.exc_text = None, safe
        return True


def install_secret_redaction(logger: logging.Logger | None = None) -> None:
    """Add the filter to every handler of `logger` (the root logger by default)."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, SecretRedactingFilter) for f in handler.filters):
            handler.addFilter(SecretRedactingFilter())
