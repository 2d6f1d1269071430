"""Answering `POST /device-api/v1/image-queries` on the edge: docs/architecture.md §3 from validation to outbox.

A configured, enabled detector without a model on this edge answers with its label prior (from the
cloud, kept by edge.api.core.priors) and escalates (reason no_model) by the same rules as an answer
the edge is unsure of; only when no prior is known at all is it 503 (the gateway asks the cloud).
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from common.alerts import is_confident
from common.bundle import DetectorMode
from common.confidence import is_out_of_domain
from common.edge_config import EdgeConfig
from common.ids import new_image_query_id
from common.imaging import ImageLimits, check_image_bytes, content_type_of, decode_image, inspect_image
from common.params import with_detector_policy
from common.prior import label_prior
from common.validation import EarlierQuery, idempotency_key, image_digest, repeat_conflict
from common.wire.device_api import (
    RESULT_TYPE_BY_MODE,
    EdgeDiagnostics,
    HumanReview,
    ImageQuery,
    Result,
    ResultSource,
    make_result,
    utc_now_iso,
)
from common.wire.escalation import EscalationCreate, EscalationReason
from common.wire.inference import InferenceResult
from common.wire.priors import DetectorPrior
from edge.api.alerts.watcher import AlertWatcher
from edge.api.core.config_store import ConfigStore
from edge.api.core.decision import Decision, decide, decide_without_model
from edge.api.core.detectors import DetectorDirectory, EdgeDetector
from edge.api.core.inference_client import InferenceClient, InferenceUnavailableError, NoModelError
from edge.api.core.locks import KeyedLocks
from edge.api.core.params import SubmitParams
from edge.api.core.priors import PriorBook
from edge.api.core.store import EdgeStore, OutboxItem, StoredQuery
from edge.api.errors import (
    BadRequestError,
    ConflictError,
    EdgeCannotAnswerError,
    NotServedHereError,
    OfflineOnlyError,
)
from edge.api.escalation.person_answers import PersonAnswers, awaits_a_person, with_answer
from edge.api.metrics import EdgeMetrics

log = logging.getLogger("edge.image_queries")
DEFAULT_PATIENCE_S = 30.0
# Larger images are hashed off the event loop.
_INLINE_HASH_BYTES = 1 << 20


@dataclass(frozen=True)
class Keys:
    """What a retry of this request must match (common.validation); both None without any key."""

    request_key: str | None = None
    image_sha256: str | None = None


@dataclass(frozen=True)
class Answer:
    body: str
    server_timing: str = ""
    replayed: bool = False


class ImageQueryService:
    def __init__(
        self,
        store: EdgeStore,
        config: ConfigStore,
        directory: DetectorDirectory,
        inference: InferenceClient,
        on_escalation: Callable[[], None],
        metrics: EdgeMetrics,
        limits: ImageLimits,
        edge_id: str,
        rng: Callable[[], float] = random.random,
        person_answers: PersonAnswers | None = None,
        priors: PriorBook | None = None,
        alerts: AlertWatcher | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._directory = directory
        self._inference = inference
        self._on_escalation = on_escalation
        self._metrics = metrics
        self._limits = limits
        self._edge_id = edge_id
        self._rng = rng
        self._person_answers = person_answers
        self._priors = priors
        self._alerts = alerts
        self._locks = KeyedLocks()
        self._last_escalation: dict[str, float] = {}

    async def get(self, image_query_id: str) -> str:
        """The local record; for an escalated query, with the person's answer once the cloud has one."""
        body = self._store.lookup_query(image_query_id)
        if body is None:
            raise NotServedHereError(f"image query {image_query_id} is not known to this edge")
        if self._person_answers is None:
            return body
        iq = awaits_a_person(body)
        if iq is None:
            return body
        answer = await self._person_answers.human_answer(iq.id)
        if answer is None:
            return body
        answered = with_answer(iq, answer).model_dump_json()
        await self._store.run(lambda: self._store.update_query(iq.id, answered))
        return answered

    async def submit(self, params: SubmitParams, image: bytes, request_id: str | None) -> Answer:
        """Idempotent on `image_query_id` and on the request id, each checked against the detector
        and the image: a true retry returns the first answer, anything else sharing a key is 409."""
        request_key = idempotency_key(request_id)
        keys = [key for key in (params.image_query_id, request_key) if key]
        if not keys:
            return await self._answer(params, image, Keys())
        if len(image) > _INLINE_HASH_BYTES:
            image_sha256 = await asyncio.to_thread(image_digest, image)
        else:
            image_sha256 = image_digest(image)
        async with self._locks.hold_all(keys):
            # An indexed read on the event loop (WAL readers do not wait for the writer); under the
            # keys' locks it sees any earlier request with these keys, which recorded before releasing.
            earlier = self._store.lookup_records(params.image_query_id, request_key)
            for record in earlier:
                _refuse_unless_repeat(record, params, image_sha256)
            if earlier:
                return Answer(earlier[0].body, replayed=True)
            return await self._answer(params, image, Keys(request_key, image_sha256))

    async def _answer(self, params: SubmitParams, image: bytes, keys: Keys) -> Answer:
        start = time.perf_counter()
        # Bytes and format only: the inference service parses the header once and enforces pixel
        # limits (its 4xx comes back as ours); paths that skip inference decode fully below.
        content_type = content_type_of(check_image_bytes(image, self._limits))
        config = self._config.config
        detector = await self._served_detector(config, params.detector_id, image)
        prior, mode, query = await self._prior_mode_query(detector, params.detector_id, image)
        no_cloud = detector.inference_config.disable_cloud_escalation
        threshold = _threshold(params, detector, prior, self._priors)
        known = prior or (self._priors.known(params.detector_id) if self._priors is not None else None)
        if known is not None:  # the detector's human-review policy, for queries that leave it to it
            params = with_detector_policy(params, known.human_review, cloud_allowed=not no_cloud)
        iq_id = params.image_query_id or new_image_query_id()

        if params.want_async or params.human_review is HumanReview.ALWAYS:
            return await self._escalate_unanswered(
                params, image, keys, content_type, mode, query, threshold, iq_id, no_cloud
            )

        if prior is not None:
            return await self._answer_with_prior(
                params, image, keys, content_type, detector, prior, iq_id, threshold, start
            )
        return await self._answer_with_model(
            params, image, keys, content_type, detector, mode, query, iq_id, threshold, start, config
        )

    async def _served_detector(self, config: EdgeConfig, detector_id: str, image: bytes) -> EdgeDetector:
        """The detector, if this edge serves it; otherwise the 503 that sends the request to the cloud."""
        try:
            detector = await self._directory.lookup(config, detector_id)
        except InferenceUnavailableError as exc:
            raise self._cannot_answer(None, str(exc), image) from None
        if detector is None or not detector.inference_config.enabled:
            self._metrics.count_image_query(detector_id, "not_served")
            raise self._cannot_answer(None, f"detector {detector_id} is not served by this edge", image)
        return detector

    async def _prior_mode_query(
        self, detector: EdgeDetector, detector_id: str, image: bytes
    ) -> tuple[DetectorPrior | None, DetectorMode, str]:
        """Mode and query from the model, else from the label prior (returned, as it answers instead)."""
        model = detector.model
        if model is not None:
            return None, DetectorMode(model.mode), model.query
        prior: DetectorPrior | None = None
        if self._priors is not None:
            prior = await self._priors.lookup(detector_id)
        if prior is None:
            raise self._cannot_answer(
                detector,
                f"no model is installed for {detector_id} yet and its label prior is not known",
                image,
            )
        return prior, prior.mode, prior.query

    async def _escalate_unanswered(
        self,
        params: SubmitParams,
        image: bytes,
        keys: Keys,
        content_type: str,
        mode: DetectorMode,
        query: str,
        threshold: float,
        iq_id: str,
        no_cloud: bool,
    ) -> Answer:
        """want_async / human_review=ALWAYS: no edge answer at all, straight to the cloud's people."""
        if no_cloud:
            raise BadRequestError(
                f"detector {params.detector_id} is edge-only (cloud escalation disabled); "
                "want_async and human_review=ALWAYS need the cloud"
            )
        # Bytes that leave the edge must be a decodable image: check fully before queueing.
        await asyncio.to_thread(decode_image, image, self._limits)
        reason = EscalationReason.WANT_ASYNC if params.want_async else EscalationReason.HUMAN_REVIEW_ALWAYS
        iq = self._image_query(iq_id, params, mode, query, threshold, None, done=False)
        iq.intellioptics = EdgeDiagnostics(escalated=True, escalation_reason=reason.value)
        body = await self._record(iq, keys, image, content_type, reason)
        self._metrics.count_image_query(params.detector_id, reason.value)
        return Answer(body)

    async def _answer_with_model(
        self,
        params: SubmitParams,
        image: bytes,
        keys: Keys,
        content_type: str,
        detector: EdgeDetector,
        mode: DetectorMode,
        query: str,
        iq_id: str,
        threshold: float,
        start: float,
        config: EdgeConfig,
    ) -> Answer:
        """The model's answer, escalated or not by the decision tree; the prior if the model just went."""
        t_infer = time.perf_counter()
        try:
            inf = await self._inference.infer(params.detector_id, image)
        except NoModelError as exc:
            # The model went away since it was looked up (e.g. its only version was rejected).
            prior = self._priors.known(params.detector_id) if self._priors is not None else None
            if prior is None:
                raise self._cannot_answer(detector, str(exc), image) from None
            return await self._answer_with_prior(
                params, image, keys, content_type, detector, prior, iq_id, threshold, start
            )
        except InferenceUnavailableError as exc:
            raise self._cannot_answer(detector, str(exc), image) from None
        infer_ms = (time.perf_counter() - t_infer) * 1e3

        decision = self._decide(params, detector, inf, threshold, config)
        result = make_result(
            mode, inf.label, inf.confidence, ResultSource.ALGORITHM, True, inf.greater_than_max
        )
        iq = self._image_query(iq_id, params, mode, query, threshold, result, done=decision.done_processing)
        iq.rois = inf.rois
        total_ms = (time.perf_counter() - start) * 1e3
        iq.intellioptics = _model_diagnostics(inf, decision, infer_ms, total_ms)
        body = await self._record(iq, keys, image, content_type, decision.escalate)
        if self._alerts is not None:  # §12: confident answers (audited ones too) feed the alert rules
            confident = is_confident(inf.confidence, inf.in_domain, threshold)
            await self._alerts.watch(iq, confident=confident)
        self._metrics.count_image_query(params.detector_id, _model_outcome(decision, inf, threshold))
        timing = ", ".join(
            f"{name};dur={value:.3f}"
            for name, value in (("edge", total_ms), ("inference", infer_ms), *inf.timings_ms.items())
        )
        return Answer(body, server_timing=timing)

    def _decide(
        self,
        params: SubmitParams,
        detector: EdgeDetector,
        inf: InferenceResult,
        threshold: float,
        config: EdgeConfig,
    ) -> Decision:
        """The decision tree for a model answer; an escalation (not an audit) restarts the cooldown."""
        now = time.monotonic()
        last = self._last_escalation.get(params.detector_id)
        decision = decide(
            confidence=inf.confidence,
            in_domain=inf.in_domain,
            threshold=threshold,
            config=detector.inference_config,
            human_review=params.human_review,
            audit_draw=self._rng(),
            audit_rate=config.global_config.confident_audit_rate,
            seconds_since_last_escalation=None if last is None else now - last,
        )
        if decision.escalate is not None and not decision.audit:
            self._last_escalation[params.detector_id] = now
        return decision

    def _cannot_answer(self, detector: EdgeDetector | None, why: str, image: bytes) -> EdgeCannotAnswerError:
        """The 503 that sends a request on to the cloud; bytes that are no usable image never go."""
        inspect_image(image, self._limits)
        if detector is not None and detector.inference_config.disable_cloud_escalation:
            self._metrics.count_image_query(detector.detector_id, "unavailable_offline")
            return OfflineOnlyError(f"{why}; the detector is edge-only, so the cloud will not answer it")
        return EdgeCannotAnswerError(why)

    async def _answer_with_prior(
        self,
        params: SubmitParams,
        image: bytes,
        keys: Keys,
        content_type: str,
        detector: EdgeDetector,
        prior: DetectorPrior,
        iq_id: str,
        threshold: float,
        start: float,
    ) -> Answer:
        """No model here yet: the most frequent label so far, with its smoothed prior as confidence
        (common.prior), escalated so that a person answers and the detector learns."""
        # No inference looks at these bytes: check them fully, so no bad input is answered or escalated.
        await asyncio.to_thread(decode_image, image, self._limits)
        answer = label_prior(prior.labels, prior.counts)
        now = time.monotonic()
        last = self._last_escalation.get(params.detector_id)
        decision = decide_without_model(
            config=detector.inference_config,
            human_review=params.human_review,
            seconds_since_last_escalation=None if last is None else now - last,
        )
        if decision.escalate is not None:
            self._last_escalation[params.detector_id] = now
        result = make_result(prior.mode, answer.label, answer.confidence, ResultSource.ALGORITHM, True)
        iq = self._image_query(
            iq_id, params, prior.mode, prior.query, threshold, result, done=decision.done_processing
        )
        total_ms = (time.perf_counter() - start) * 1e3
        iq.intellioptics = EdgeDiagnostics(
            model_version=None,
            escalated=decision.escalate is not None,
            escalation_reason=decision.escalate.value
            if decision.escalate
            else decision.not_escalated_because,
            timings_ms={"edge_total": round(total_ms, 3)},
        )
        body = await self._record(iq, keys, image, content_type, decision.escalate)
        outcome = (
            decision.escalate.value if decision.escalate else f"no_model_{decision.not_escalated_because}"
        )
        self._metrics.count_image_query(params.detector_id, outcome)
        return Answer(body, server_timing=f"edge;dur={total_ms:.3f}")

    def _image_query(
        self,
        iq_id: str,
        params: SubmitParams,
        mode: DetectorMode,
        query: str,
        threshold: float,
        result: Result | None,
        done: bool,
    ) -> ImageQuery:
        return ImageQuery(
            id=iq_id,
            created_at=utc_now_iso(),
            query=query,
            detector_id=params.detector_id,
            result_type=RESULT_TYPE_BY_MODE[mode],
            result=result,
            patience_time=params.patience_time if params.patience_time is not None else DEFAULT_PATIENCE_S,
            confidence_threshold=threshold,
            metadata=params.metadata,
            done_processing=done,
        )

    async def _record(
        self,
        iq: ImageQuery,
        keys: Keys,
        image: bytes,
        content_type: str,
        reason: EscalationReason | None,
    ) -> str:
        """Store the query (and its escalation, durably); return the JSON body that was stored."""
        body = iq.model_dump_json()
        item = None
        if reason is not None:
            payload = EscalationCreate(
                image_query_id=iq.id,
                detector_id=iq.detector_id,
                reason=reason,
                image_query=iq,
                image_content_type=content_type,
                edge_id=self._edge_id,
                created_at=iq.created_at,
            )
            item = OutboxItem(
                image_query_id=iq.id,
                detector_id=iq.detector_id,
                reason=reason.value,
                payload=payload.model_dump_json(),
                image=image,
                content_type=content_type,
                created_at=time.time(),
                attempts=0,
            )
        record = (iq.id, keys.request_key, iq.detector_id, keys.image_sha256, body)
        try:
            if item is None and self._store.try_record_inline(*record):
                return body
            await self._store.run(lambda: self._store.record_query(*record, item))
        except sqlite3.IntegrityError:
            # Unreachable while the keys' locks serialise requests (one process): a 409, never a 500.
            raise ConflictError(
                f"an image query with id {iq.id} or this X-Request-Id is already recorded; "
                "send a new query with a new id"
            ) from None
        if item is not None:
            self._metrics.escalations_queued.labels(item.reason).inc()
            self._on_escalation()
            result = iq.result
            log.info(
                "query escalated",
                extra={
                    "fields": {
                        "image_query_id": iq.id,
                        "detector_id": iq.detector_id,
                        "reason": item.reason,
                        "confidence": None if result is None else result.confidence,
                        "threshold": iq.confidence_threshold,
                    }
                },
            )
        return body


def _refuse_unless_repeat(record: StoredQuery, params: SubmitParams, image_sha256: str) -> None:
    earlier = EarlierQuery(
        image_query_id=record.image_query_id,
        detector_id=record.detector_id,
        image_sha256=record.image_sha256,
    )
    why = repeat_conflict(
        earlier,
        detector_id=params.detector_id,
        image_sha256=image_sha256,
        image_query_id=params.image_query_id,
    )
    if why is not None:
        raise ConflictError(why)


def _model_diagnostics(
    inf: InferenceResult, decision: Decision, infer_ms: float, total_ms: float
) -> EdgeDiagnostics:
    """What the edge saw and decided, kept with the query so a reviewer can tell why it went (or not)."""
    return EdgeDiagnostics(
        raw_confidence=inf.raw_confidence,
        in_domain_score=inf.in_domain,
        out_of_domain=is_out_of_domain(inf.in_domain),
        model_version=inf.model_version,
        escalated=decision.escalate is not None,
        escalation_reason=decision.escalate.value if decision.escalate else decision.not_escalated_because,
        audit=decision.audit,
        timings_ms={
            **inf.timings_ms,
            "inference_call": round(infer_ms, 3),
            "edge_total": round(total_ms, 3),
        },
    )


def _model_outcome(decision: Decision, inf: InferenceResult, threshold: float) -> str:
    """The metrics label of a model answer: why it escalated, else confident, else why it stayed."""
    if decision.escalate is not None:
        return decision.escalate.value
    if inf.confidence >= threshold:
        return "confident"
    return decision.not_escalated_because or "not_escalated"


def _threshold(
    params: SubmitParams, detector: EdgeDetector, prior: DetectorPrior | None, priors: PriorBook | None
) -> float:
    """The request's, else the edge config's (a local override), else the cloud's current one for this
    detector (the prior just looked up, or the one at hand: never waited for), else the model's default."""
    if prior is not None:
        cloud: float | None = prior.confidence_threshold
    else:
        cloud = priors.cloud_threshold(params.detector_id) if priors is not None else None
    return detector.threshold(cloud, params.confidence_threshold).value
