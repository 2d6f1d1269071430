from __future__ import annotations

import base64
import json

import pytest

from common.wire.device_api import HumanReview
from edge.api.core.params import parse_submit_params
from edge.api.errors import BadRequestError

DET = "det_" + "A" * 27


def b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode()


def test_sdk_style_parameters_are_parsed() -> None:
    p = parse_submit_params(
        {
            "detector_id": DET,
            "patience_time": "5.0",
            "confidence_threshold": "0.75",
            "human_review": "ALWAYS",
            "want_async": "True",
            "metadata": b64({"camera": "a", "n": 1}),
            "image_query_id": "iq_custom123",
        }
    )
    assert p.confidence_threshold == 0.75 and p.patience_time == 5.0
    assert p.human_review is HumanReview.ALWAYS and p.want_async
    assert p.metadata == {"camera": "a", "n": 1} and p.image_query_id == "iq_custom123"


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"detector_id": "det_short"},
        {"detector_id": "det_../../etc/passwd000000000"},
        {"detector_id": DET, "confidence_threshold": "1.5"},
        {"detector_id": DET, "confidence_threshold": "abc"},
        {"detector_id": DET, "confidence_threshold": "nan"},
        {"detector_id": DET, "patience_time": "0"},
        {"detector_id": DET, "patience_time": "-3"},
        {"detector_id": DET, "human_review": "SOMETIMES"},
        {"detector_id": DET, "want_async": "maybe"},
        {"detector_id": DET, "metadata": "!!notbase64!!"},
        {"detector_id": DET, "metadata": b64([1, 2])},
        {"detector_id": DET, "metadata": b64({"k": "x" * 1100})},
        {"detector_id": DET, "image_query_id": "xx_nope"},
        {"detector_id": DET, "image_query_id": "iq_../etc"},
    ],
)
def test_bad_parameters_are_rejected_with_400(query: dict[str, str]) -> None:
    with pytest.raises(BadRequestError) as info:
        parse_submit_params(query)
    assert info.value.status == 400 and str(info.value)
