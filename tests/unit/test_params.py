from __future__ import annotations

import base64
import json

import pytest

from common.params import SubmitParams, with_detector_policy
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


@pytest.mark.parametrize(
    ("asked", "policy", "cloud_allowed", "gets"),
    [
        ("DEFAULT", "DEFAULT", True, "DEFAULT"),
        ("DEFAULT", "ALWAYS", True, "ALWAYS"),
        ("DEFAULT", "NEVER", True, "NEVER"),
        ("NEVER", "ALWAYS", True, "NEVER"),  # the query's own choice wins
        ("ALWAYS", "NEVER", True, "ALWAYS"),
        ("DEFAULT", "ALWAYS", False, "DEFAULT"),  # nothing can reach people from an edge-only detector
        ("DEFAULT", "NEVER", False, "NEVER"),
    ],
)
def test_a_detectors_people_review_policy_fills_in_for_default(
    asked: str, policy: str, cloud_allowed: bool, gets: str
) -> None:
    params = SubmitParams(detector_id="det_x", human_review=HumanReview(asked), confidence_threshold=0.7)
    out = with_detector_policy(params, HumanReview(policy), cloud_allowed)
    assert out.human_review is HumanReview(gets)
    assert out.confidence_threshold == 0.7 and out.detector_id == "det_x"
