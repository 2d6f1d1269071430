"""The labeling page's reasons in words: each code with the numbers behind it."""

from __future__ import annotations

import pytest

from cloud.app.core.review_reasons import why_in_review
from common.wire.escalation import EscalationReason


def test_low_confidence_names_the_guess_its_confidence_and_the_threshold() -> None:
    text = why_in_review("low_confidence", guess="NO", confidence=0.62, threshold=0.9)
    assert text == "The model was 62 % sure of NO; the threshold is 90 %."
    assert why_in_review("low_confidence") == "The model gave no confidence for its answer."


def test_a_near_certain_confidence_is_never_rounded_to_certain() -> None:
    assert why_in_review("low_confidence", guess="3", confidence=0.9996, threshold=1.0) == (
        "The model was 99.9 % sure of 3; the threshold is 100 %."
    )
    assert "99.5 %" in why_in_review("low_confidence", confidence=0.995, threshold=1.0)


def test_out_of_domain_says_the_image_is_unlike_the_training_images() -> None:
    text = why_in_review("out_of_domain", guess="YES", confidence=0.97, in_domain=0.08)
    assert text.startswith(
        "The image looks unlike the images this detector learnt from (in-domain score 0.08"
    )
    assert text.endswith("The model was 97 % sure of YES.")


@pytest.mark.parametrize(
    ("reason", "phrase"),
    [
        ("want_async", "asked for the answer later"),
        ("human_review_always", "every image"),
        ("audit", "spot check"),
        ("no_model", "no trained model yet"),
    ],
)
def test_every_reason_has_words(reason: str, phrase: str) -> None:
    assert phrase in why_in_review(reason, guess="YES", confidence=0.99)


def test_every_escalation_reason_is_covered_and_an_unknown_one_is_still_readable() -> None:
    for code in EscalationReason:
        assert "_" not in why_in_review(code.value).split("(")[0], code
    assert why_in_review("cloud_said_so") == "Sent for review (cloud said so)."
