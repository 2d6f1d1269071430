"""Human answers to escalated queries, fetched from the cloud when a client reads the query here.

The edge answers at once and escalates what it is unsure of; a person answers later, in the cloud.
When `GET /device-api/v1/image-queries/{id}` finds a local record that was escalated and that no
person has answered yet, the edge asks the cloud for the same query (`x-api-token`, a short timeout).
A person's answer (source HUMAN or USER) replaces the edge's result in the local record, so later
reads need no cloud. The cloud never makes that read fail: unreachable, slow, or not answered yet,
the local record is returned as it is.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from common.wire.device_api import ImageQuery, Result, ResultSource, Roi
from edge.api.escalation.cloud_link import CloudLink

log = logging.getLogger("edge.person_answers")

IMAGE_QUERIES_PATH = "/device-api/v1/image-queries"
# A person reviewed it in the cloud (HUMAN) or the customer labelled it (USER, the SDK's name).
HUMAN_SOURCES = frozenset({ResultSource.HUMAN.value, "USER"})
# Written by ImageQuery.model_dump_json (compact JSON): a cheap filter before parsing a record.
_ESCALATED_MARK = '"escalated":true'


def answered_by_a_person(result: Result | None) -> bool:
    return result is not None and str(result.source) in HUMAN_SOURCES


def awaits_a_person(body: str) -> ImageQuery | None:
    """The stored query, parsed, when it was escalated and no person has answered it yet; else None."""
    if _ESCALATED_MARK not in body:
        return None
    iq = ImageQuery.model_validate_json(body)
    if iq.intellioptics is None or not iq.intellioptics.escalated or answered_by_a_person(iq.result):
        return None
    return iq


@dataclass(frozen=True)
class PersonAnswer:
    """A person's answer from the cloud: the result, and the boxes they drew (box modes)."""

    result: Result
    rois: list[Roi] | None = None


def with_answer(iq: ImageQuery, answer: PersonAnswer) -> ImageQuery:
    """The local query carrying the person's answer (boxes included): final, the edge's diagnostics kept."""
    return iq.model_copy(update={"result": answer.result, "rois": answer.rois, "done_processing": True})


class PersonAnswers:
    """Asks the cloud whether a person has answered a query.

    While the cloud is known to be unreachable (the outbox, the probe or an earlier read found it so
    less than `recheck_after_s` ago), reads do not wait for it again.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        link: CloudLink,
        api_token: str,
        timeout_s: float,
        recheck_after_s: float = 5.0,
    ) -> None:
        self._http = http
        self._link = link
        self._headers = {"x-api-token": api_token} if api_token else {}
        self._timeout = timeout_s
        self._recheck_after = recheck_after_s

    def _cloud_seems_down(self) -> bool:
        failed_at = self._link.last_failure_at
        return (
            self._link.reachable is False
            and failed_at is not None
            and time.time() - failed_at < self._recheck_after
        )

    async def human_answer(self, image_query_id: str) -> PersonAnswer | None:
        """The person's result for this query, or None (not answered yet, unknown, cloud unavailable)."""
        if self._cloud_seems_down():
            return None
        try:
            resp = await self._http.get(
                f"{IMAGE_QUERIES_PATH}/{quote(image_query_id, safe='')}",
                headers=self._headers,
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            self._link.failed(f"{type(exc).__name__}: {exc}"[:300])
            return None
        self._link.succeeded()
        if resp.status_code != 200:
            if resp.status_code in (401, 403):
                log.warning(
                    "the cloud refused to show an escalated query",
                    extra={"fields": {"iq": image_query_id, "status": resp.status_code}},
                )
            return None
        try:
            cloud_iq = ImageQuery.model_validate_json(resp.content)
        except ValidationError:
            log.warning(
                "the cloud answered with something that is no image query",
                extra={"fields": {"iq": image_query_id}},
            )
            return None
        if (
            cloud_iq.id != image_query_id
            or cloud_iq.result is None
            or not answered_by_a_person(cloud_iq.result)
        ):
            return None
        return PersonAnswer(cloud_iq.result, cloud_iq.rois)
