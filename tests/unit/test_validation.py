"""common.validation: one set of rules for client input, so that whatever the edge accepts the cloud
takes too (nothing the edge queues dies in its outbox), and idempotency keys that are never cut."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from cloud.app.core.escalations import _check_consistent
from cloud.app.errors import BadRequestError as CloudBadRequest
from common.validation import (
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    MAX_ROIS,
    EarlierQuery,
    InvalidInputError,
    check_name,
    check_rois,
    decode_metadata,
    idempotency_key,
    repeat_conflict,
)
from common.wire.device_api import ImageQuery, ResultType, Roi, utc_now_iso
from common.wire.escalation import EscalationCreate, EscalationReason
from edge.api.core.params import parse_submit_params
from edge.api.errors import BadRequestError as EdgeBadRequest

DET = "det_" + "A" * 27
OTHER = "det_" + "B" * 27


def b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode()


def b64_text(text: bytes) -> str:
    return base64.urlsafe_b64encode(text).decode()


def nested(depth: int) -> dict[str, Any]:
    """An object `depth` containers deep: nested(1) == {"v": 1}."""
    value: dict[str, Any] = {"v": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


REFUSED = {
    "lone surrogate in a value": b64({"a": "\ud800"}),
    "lone surrogate in a key": b64({"\udfff": 1}),
    "NUL in a value": b64({"a": "x\x00y"}),
    "NUL in a key": b64({"a\x00": 1}),
    "NaN": b64_text(b'{"x": NaN}'),
    "Infinity": b64_text(b'{"x": -Infinity}'),
    "a number too large for a float": b64_text(b'{"x": 1e400}'),
    "40 levels deep": b64(nested(40)),
    "one level too deep": b64(nested(MAX_METADATA_DEPTH + 1)),
    "over 1 KiB": b64({"k": "x" * MAX_METADATA_BYTES}),
    "not an object": b64([1, 2]),
    "not UTF-8": b64_text(b'{"a": "\xff"}'),
    "not base64": "!!nope!!",
    "plain JSON text with NUL": '{"a": "\\u0000"}',
}
ACCEPTED = {
    "SDK style": b64({"camera": "line-1", "n": 1, "ok": True, "none": None, "list": [1.5, "x"]}),
    "as deep as allowed": b64(nested(MAX_METADATA_DEPTH)),
    "astral characters": b64({"emoji": "\U0001f600" * 10}),
    "plain JSON text": '{"camera": "a"}',
    "just under the limit": b64({"k": "x" * (MAX_METADATA_BYTES - 10)}),
}


def escalation_with(metadata: dict[str, Any] | None) -> EscalationCreate:
    """What the edge's outbox sends for a query with this metadata, after its JSON round trip."""
    iq = ImageQuery(
        id="iq_" + "c" * 27,
        created_at=utc_now_iso(),
        query="Is it open?",
        detector_id=DET,
        result_type=ResultType.BINARY,
        result=None,
        patience_time=30.0,
        confidence_threshold=0.9,
        metadata=metadata,
    )
    payload = EscalationCreate(
        image_query_id=iq.id,
        detector_id=DET,
        reason=EscalationReason.WANT_ASYNC,
        image_query=iq,
        image_content_type="image/jpeg",
        edge_id="edge-test",
        created_at=iq.created_at,
    )
    return EscalationCreate.model_validate_json(payload.model_dump_json())


@pytest.mark.parametrize("raw", REFUSED.values(), ids=REFUSED.keys())
def test_the_edge_refuses_bad_metadata_with_400(raw: str) -> None:
    with pytest.raises(EdgeBadRequest) as info:
        parse_submit_params({"detector_id": DET, "metadata": raw})
    detail = str(info.value)
    assert detail.startswith("metadata")
    detail.encode("utf-8")  # the detail itself can always be sent


@pytest.mark.parametrize("raw", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_metadata_the_edge_accepts_is_accepted_by_the_cloud_escalation_intake(raw: str) -> None:
    metadata = parse_submit_params({"detector_id": DET, "metadata": raw}).metadata
    assert metadata is not None
    _check_consistent(escalation_with(metadata))  # raises on anything the cloud would refuse


@pytest.mark.parametrize(
    "metadata",
    [nested(MAX_METADATA_DEPTH + 1), {"a": "x\x00"}, {"k": "x" * MAX_METADATA_BYTES}],
    ids=["too deep", "NUL", "too large"],
)
def test_the_cloud_escalation_intake_refuses_what_the_edge_refuses(metadata: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        decode_metadata(b64(metadata))
    with pytest.raises(CloudBadRequest, match="metadata"):
        _check_consistent(escalation_with(metadata))


def test_size_is_measured_the_same_way_on_both_sides() -> None:
    # Compact UTF-8 is never longer than the SDK's json.dumps, so all the SDK sends fits on both sides.
    metadata = {"name": "é" * 150, "n": [1, 2, 3]}
    assert len(json.dumps(metadata).encode()) <= MAX_METADATA_BYTES
    assert decode_metadata(b64(metadata)) == metadata
    _check_consistent(escalation_with(metadata))


def test_names_are_trimmed_and_never_empty() -> None:
    assert check_name("  door closed \n") == "door closed"
    for bad in ("", "   ", "\t\n", "x" * 201, "a\x00b", "a\ud800"):
        with pytest.raises(InvalidInputError):
            check_name(bad)


def test_request_ids_are_kept_whole_or_hashed_whole_never_cut() -> None:
    sdk = "req_uu" + "0" * 32
    assert idempotency_key(sdk) == sdk
    assert idempotency_key(None) is None and idempotency_key("") is None
    shared = "r" * 128
    one, two = idempotency_key(shared + "a" * 12), idempotency_key(shared + "b" * 12)
    assert one != two and one is not None and two is not None
    assert len(one) <= 140 and one == idempotency_key(shared + "a" * 12)
    # A client that sends a hashed key's text as its id gets another key: the two never meet.
    assert idempotency_key(one) != one
    assert idempotency_key("with space") != "with space"


def test_a_repeat_must_match_detector_id_and_image() -> None:
    earlier = EarlierQuery("iq_first", DET, "a" * 64)
    same = {"detector_id": DET, "image_sha256": "a" * 64, "image_query_id": "iq_first"}
    assert repeat_conflict(earlier, **same) is None
    assert repeat_conflict(earlier, **{**same, "image_query_id": None}) is None
    other_detector = repeat_conflict(earlier, **{**same, "detector_id": OTHER})
    assert other_detector is not None and DET in other_detector
    other_image = repeat_conflict(earlier, **{**same, "image_sha256": "b" * 64})
    assert other_image is not None and "different image" in other_image
    other_id = repeat_conflict(earlier, **{**same, "image_query_id": "iq_second"})
    assert other_id is not None and "iq_first" in other_id
    # Records from before images were hashed match on detector and id alone.
    legacy = EarlierQuery("iq_first", DET, None)
    assert repeat_conflict(legacy, **{**same, "image_sha256": "b" * 64}) is None


# --- ROIs -------------------------------------------------------------------------------------------


def box(left: Any = 0.1, top: Any = 0.2, right: Any = 0.5, bottom: Any = 0.6, **extra: Any) -> dict[str, Any]:
    """One ROI as the SDK's create_roi sends it (x, y included)."""
    geometry = {"left": left, "top": top, "right": right, "bottom": bottom, "x": 0.3, "y": 0.4}
    return {"label": "bolt", "score": 1.0, "geometry": geometry, **extra}


def test_good_rois_are_kept_and_their_centres_recomputed() -> None:
    sloppy = box()
    sloppy["geometry"].update(x=0.9, y=0.9)  # wrong centres are recomputed, not trusted
    no_centre = {"label": "nut", "geometry": {"left": 0, "top": 0, "right": 1, "bottom": 1}}
    rois = check_rois([sloppy, no_centre, box(score=0)])
    assert rois is not None and len(rois) == 3
    assert rois[0] == Roi.from_box("bolt", 1.0, 0.1, 0.2, 0.5, 0.6)
    assert rois[0].geometry.x == pytest.approx(0.3) and rois[0].geometry.y == pytest.approx(0.4)
    assert rois[1].score == 1.0 and (rois[1].geometry.x, rois[1].geometry.y) == (0.5, 0.5)
    assert rois[2].score == 0.0
    assert check_rois(None) is None and check_rois([]) == []
    assert check_rois([box()] * MAX_ROIS) is not None


BAD_ROIS: dict[str, tuple[Any, str]] = {
    "not a list": ({"label": "x"}, "list"),
    "a box that is not an object": (["box"], "rois[0]"),
    "left below 0": ([box(left=-0.1)], "rois[0].geometry.left"),
    "right above 1": ([box(right=1.5)], "rois[0].geometry.right"),
    "bottom above 1": ([box(bottom=2)], "[0, 1]"),
    "right left of left": ([box(left=0.6, right=0.5)], "right"),
    "right equal to left": ([box(left=0.5, right=0.5)], "right"),
    "bottom above top": ([box(top=0.7, bottom=0.6)], "bottom"),
    "101 boxes": ([box()] * (MAX_ROIS + 1), "limit is 100"),
    "NaN coordinate": ([box(left=float("nan"))], "finite"),
    "infinite coordinate": ([box(right=float("inf"))], "finite"),
    "an integer too large for a float": ([box(left=10**400)], "[0, 1]"),
    "an integer coordinate outside": ([box(right=2)], "is 2;"),
    "NaN score": ([box(score=float("nan"))], "score"),
    "score over 1": ([box(score=1.5)], "score"),
    "NaN centre": ([box() | {"geometry": {**box()["geometry"], "x": float("nan")}}], "geometry.x"),
    "coordinate as text": ([box(left="0.1")], "number"),
    "coordinate as bool": ([box(left=True)], "number"),
    "coordinate missing": ([{"label": "a", "geometry": {"left": 0, "top": 0, "right": 1}}], "bottom"),
    "geometry missing": ([{"label": "a"}], "geometry"),
    "geometry not an object": ([{"label": "a", "geometry": [0, 0, 1, 1]}], "geometry"),
    "label missing": ([{"geometry": box()["geometry"]}], "label"),
    "label not text": ([box(label=3)], "label"),
    "label empty": ([box(label="  ")], "label"),
    "label over 100 characters": ([box(label="x" * 101)], "100"),
    "label with NUL": ([box(label="a\x00b")], "NUL"),
}


@pytest.mark.parametrize(("raw", "expected"), BAD_ROIS.values(), ids=BAD_ROIS.keys())
def test_bad_rois_are_refused_with_a_message_that_says_why(raw: Any, expected: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        check_rois(raw)
    assert expected in str(caught.value)


def test_json_nan_tokens_in_rois_are_refused() -> None:
    """A JSON body may spell NaN and Infinity; they decode to floats the rules refuse."""
    raw = json.loads('[{"label": "a", "geometry": {"left": NaN, "top": 0, "right": 1, "bottom": -Infinity}}]')
    with pytest.raises(InvalidInputError, match="finite"):
        check_rois(raw, "labels.rois")
