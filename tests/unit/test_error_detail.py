"""What our services quote from another service's error answer."""

from __future__ import annotations

import httpx

from common.error_detail import MAX_DETAIL_CHARS, detail_of_body, error_detail


def test_a_json_detail_is_quoted_as_it_is():
    response = httpx.Response(404, json={"detail": "no such detector"})
    assert error_detail(response) == "no such detector"


def test_a_structured_detail_is_quoted_as_json():
    errors = [{"loc": ["query", "detector_id"], "msg": "Field required"}]
    assert detail_of_body(httpx.Response(422, json={"detail": errors}).content) == (
        '[{"loc": ["query", "detector_id"], "msg": "Field required"}]'
    )


def test_a_body_that_is_not_json_is_quoted_from_its_start_and_cut_short():
    response = httpx.Response(502, content=b"<html>" + b"x" * 1000)
    quoted = error_detail(response)
    assert quoted.startswith("<html>") and len(quoted) == MAX_DETAIL_CHARS
    assert len(detail_of_body(b"\xff\xfe" * 400, limit=10)) == 10


def test_json_without_a_detail_is_quoted_whole():
    assert detail_of_body(b'{"error": "boom"}') == '{"error": "boom"}'
    assert detail_of_body(b'"plain string"') == "plain string"
