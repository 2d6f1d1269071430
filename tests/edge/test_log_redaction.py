"""No log line of an edge service carries a password from a URL, whatever logged it."""

from __future__ import annotations

import io
import json
import logging

from common.http import JsonLineFormatter
from common.log_redaction import SecretRedactingFilter, install_secret_redaction, redact_text


def test_passwords_in_urls_are_masked_and_the_rest_is_kept() -> None:
    text = "open rtsp://admin:hunter2@10.0.0.5:554/s1 and http://u:p%40ss@cam/x, file:///a@b, mail a@b"
    assert redact_text(text) == (
        "open rtsp://admin:***@10.0.0.5:554/s1 and http://u:***@cam/x, file:///a@b, mail a@b"
    )
    assert redact_text("rtsp://user:***@host/") == "rtsp://user:***@host/"
    assert redact_text("rtsp://host:554/live") == "rtsp://host:554/live"


def test_the_filter_masks_message_arguments_fields_and_tracebacks() -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonLineFormatter())
    logger = logging.getLogger("tests.redaction")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    install_secret_redaction(logger)
    install_secret_redaction(logger)  # idempotent
    assert sum(isinstance(f, SecretRedactingFilter) for f in handler.filters) == 1

    logger.info(
        "connecting to %s",
        "rtsp://cam:topsecret@10.1.1.1/live",
        extra={"fields": {"url": "rtsp://cam:topsecret@h/"}},
    )
    try:
        raise ConnectionError("cannot open rtsp://cam:topsecret@10.1.1.1/live")
    except ConnectionError:
        logger.exception("stream failed")

    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert "topsecret" not in out.getvalue()
    assert lines[0]["msg"] == "connecting to rtsp://cam:***@10.1.1.1/live"
    assert lines[0]["url"] == "rtsp://cam:***@h/"
    assert "ConnectionError: cannot open rtsp://cam:***@10.1.1.1/live" in lines[1]["exc"]
