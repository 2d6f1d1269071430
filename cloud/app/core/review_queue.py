"""The review queue (docs/architecture.md §7): claim with a lease, heartbeat, answer exactly once, skip, release, undo.

An item is claimable when it is pending, nobody holds a live lease on it and this reviewer has not
skipped it. Claims take the first such item in queue order (patience deadline, then uncertainty, highest
first, then age). The lease mechanics (claim, heartbeat, release, expiry) are `REVIEW_QUEUE`, a
cloud.app.core.lease_queue like the other queues': on PostgreSQL the pick is `SELECT ... FOR UPDATE
SKIP LOCKED` inside the claiming `UPDATE`, so concurrent reviewers never wait on each other nor take the
same row; on SQLite the single `UPDATE ... WHERE id = (SELECT ...)` statement is atomic (one writer at a
time). The claim here adds what only the review queue needs: this reviewer's skips and exclusions are
left out, and the item's detector and query come back in the same statement.

Every write that needs the lease carries the lease condition in its own `WHERE` (owner, not expired,
still pending), so a check-then-write race cannot let two answers through: the database decides, and
whoever loses gets a 409. Times are this process's UTC clock; replicas need synchronised clocks (NTP),
which is far tighter than leases of tens of seconds.

Round trips (PostgreSQL): a claim is one statement (pick, lease and the item's detector and query in its
`RETURNING`); an answer is one read (lease and the detector's labels, to validate) and one statement
whose CTEs close the item, resolve the image query (result and boxes) and insert the label (with its
boxes). Each of these is atomic on its own, so they run in autocommit (no BEGIN/COMMIT) and are built
once (SQLAlchemy caches their compilation). SQLite has no data-modifying CTEs: its answer is the same
guarded UPDATE followed by the other two writes, in one transaction.

One implementation of each write: the statements run through SQLAlchemy's `conn.execute` on both
databases. An earlier version also ran the PostgreSQL statements straight on the asyncpg connection,
to skip SQLAlchemy's per-call layers. Measured with `python -m bench.review_queue --reviewers 16`
(2 API workers on a 2-core machine, full protocol), A/B interleaved on the same code otherwise: items/s
at 16 reviewers and the API's CPU per item ("foreign": cores the bench saw other work use meanwhile):

    path                   quiet runs (foreign 0.07-0.37 cores)     loaded runs (foreign 0.9-1.3 cores)
    raw asyncpg (removed)  560, 610 items/s; cloud 1.35, 1.21 ms    270, 280, 268 items/s
    SQLAlchemy (this one)  705, 502, 591 items/s; cloud 1.75,       429, 323 items/s
                           1.66, 1.49 ms

The raw path saves about 0.3 ms of API CPU per item (some 0.1 core at the 300 items/s target), but the
throughput difference is inside the run-to-run noise, and the SQLAlchemy path meets the target (>= 300
items/s) with room to spare, even on the loaded machine; so the raw twin of each write went. PostgreSQL
CPU per item was 0.6-0.85 ms either way; no double assignment in any run.

Leases are not worth a disk flush: claims and heartbeats commit with `synchronous_commit = off` (set for
that transaction only, from the statement itself). A database crash may forget a lease granted in its
last fraction of a second; the item is then simply claimable again, and the holder's answer, guarded
by the lease, gets a 409. Answers, labels and skips are durable as usual.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    JSON,
    DateTime,
    Integer,
    String,
    Table,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal,
    literal_column,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from cloud.app.blobstore import BlobNotFoundError, BlobStore
from cloud.app.core.detectors import UNCLEAR
from cloud.app.core.image_queries import rois_from_json, rois_json
from cloud.app.core.labels import HUMAN_RESULT_SOURCE, answer_rules, human_result, max_boxes
from cloud.app.core.lease_queue import LeaseQueue
from cloud.app.core.review_items import insert_ignoring_duplicates
from cloud.app.core.review_reasons import why_in_review
from cloud.app.db.models import (
    Detector,
    ImageQuery,
    Label,
    LabelSource,
    ReviewExclusion,
    ReviewItem,
    ReviewSkip,
    ReviewStatus,
    RoisJson,
)
from cloud.app.errors import ConflictError, NotFoundError
from cloud.app.schemas.review import (
    AnswerKey,
    AnswerOut,
    ClaimedItem,
    EdgePrediction,
    LeaseOut,
    QueueSummary,
    SkippedItem,
    UndoOut,
)
from common.bundle import BOX_MODES
from common.clock import as_utc, utcnow
from common.wire.device_api import Roi

_ri = cast(Table, ReviewItem.__table__)
_iq = cast(Table, ImageQuery.__table__)
_det = cast(Table, Detector.__table__)
_lab = cast(Table, Label.__table__)
_skip = cast(Table, ReviewSkip.__table__)
_excl = cast(Table, ReviewExclusion.__table__)

# Literal, not a bound parameter: PostgreSQL only uses the partial indexes (WHERE status = 'pending')
# when it can prove the predicate from the query text, including in generic prepared-statement plans.
_PENDING = literal_column("'pending'", String)
_ANSWERED = literal_column("'answered'", String)
_TS = DateTime(timezone=True)

# Items stay pending while leased: the lease columns alone say who holds one (cloud.app.core.lease_queue).
REVIEW_QUEUE = LeaseQueue(
    _ri,
    waiting=ReviewStatus.PENDING.value,
    leased=ReviewStatus.PENDING.value,
    order=("deadline", "-uncertainty", "created_at", "id"),
)

# The labeling page's key for UNCLEAR; it keeps S (skip) and Z (undo) for itself, and no label gets those.
UNCLEAR_KEY = "u"


def _is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


_autocommit_engines: dict[Engine, AsyncEngine] = {}


def _autocommit(session: AsyncSession) -> AsyncEngine:
    """The session's engine (same pool) in autocommit mode, for single-statement steps on PostgreSQL:
    no BEGIN/COMMIT round trips, and each statement is still atomic."""
    sync_engine = session.get_bind()
    assert isinstance(sync_engine, Engine)
    engine = _autocommit_engines.get(sync_engine)
    if engine is None:
        engine = AsyncEngine(sync_engine.execution_options(isolation_level="AUTOCOMMIT"))
        _autocommit_engines[sync_engine] = engine
    return engine


_SHARED = "review_queue.autocommit"


@contextlib.asynccontextmanager
async def one_connection(session: AsyncSession) -> AsyncIterator[None]:
    """Within this block the PostgreSQL steps of `session` share one pooled autocommit connection, so a
    request that answers and then claims checks a connection out once, not twice."""
    if not _is_postgres(session) or _SHARED in session.info:
        yield
        return
    async with _autocommit(session).connect() as conn:
        session.info[_SHARED] = conn
        try:
            yield
        finally:
            del session.info[_SHARED]


@contextlib.asynccontextmanager
async def _autocommit_connection(session: AsyncSession) -> AsyncIterator[AsyncConnection]:
    shared: AsyncConnection | None = session.info.get(_SHARED)
    if shared is not None:
        yield shared
        return
    async with _autocommit(session).connect() as conn:
        yield conn


def answer_keys(labels: list[str]) -> list[AnswerKey]:
    """One key per answer, shown on the page: Y/N for YES/NO, the digit itself for counts 0-9,
    1-9 by position for class names (later ones are clicked), U for UNCLEAR."""
    keys: list[AnswerKey] = []
    if sorted(labels) == ["NO", "YES"]:
        keys = [AnswerKey(label=label, key=label[0].lower()) for label in labels]
    elif labels and all(label.isdecimal() for label in labels):
        keys = [AnswerKey(label=label, key=label if len(label) == 1 else None) for label in labels]
    else:
        keys = [AnswerKey(label=label, key=str(i + 1) if i < 9 else None) for i, label in enumerate(labels)]
    return [*keys, AnswerKey(label=UNCLEAR, key=UNCLEAR_KEY)]


# -- claim ------------------------------------------------------------------------------------------------

_CLAIM_COLUMNS = (
    _ri.c.id,
    _ri.c.image_query_id,
    _ri.c.detector_id,
    _ri.c.deadline,
    _ri.c.uncertainty,
    _ri.c.reason,
    _ri.c.lease_expires_at,
    _iq.c.created_at.label("query_created_at"),
    _iq.c.result,
    _iq.c.diagnostics,
    _iq.c.rois,
    _iq.c.confidence_threshold,
    _det.c.name.label("detector_name"),
    _det.c.query,
    _det.c.mode,
    _det.c.mode_configuration,
    _det.c.labels,
)


# In a RETURNING list: evaluated inside the transaction, so its commit skips the WAL flush wait.
_NO_FLUSH_WAIT = literal_column("set_config('synchronous_commit', 'off', true)", String).label("lease_commit")

# Hot statements are built once, with bound parameters (`p_*`, never a column name), so a request pays
# neither for building them nor for their cache keys (memoised on the statement object).
_P_USER = bindparam("p_user", type_=String)
_P_NOW = bindparam("p_now", type_=_TS)
_P_ITEM = bindparam("p_item", type_=Integer)
_P_EXPIRES = bindparam("p_expires", type_=_TS)


@functools.cache
def _claim_statement(postgres: bool, by_detector: bool, by_item: bool = False) -> Any:
    """Lease the first claimable item that this reviewer did not skip (REVIEW_QUEUE.claim: the pick
    locks its row, SKIP LOCKED). `by_item`: that one item (`p_item`), also when the caller's own lease
    on it is still live."""
    where = [~exists().where(_skip.c.review_item_id == _ri.c.id, _skip.c.user_id == _P_USER)]
    if by_detector:
        where.append(_ri.c.detector_id == bindparam("p_detector", type_=String))
    elif not by_item:
        # "Label all queues" leaves out the detectors this reviewer excluded from it.
        where.append(~exists().where(_excl.c.user_id == _P_USER, _excl.c.detector_id == _ri.c.detector_id))
    if by_item:
        where.append(_ri.c.id == _P_ITEM)
    claim = REVIEW_QUEUE.claim(_P_USER, _P_EXPIRES, _P_NOW, *where, retake=by_item, claimed_at=_P_NOW)
    if postgres:
        return claim.where(_iq.c.id == _ri.c.image_query_id, _det.c.id == _ri.c.detector_id).returning(
            *_CLAIM_COLUMNS, _NO_FLUSH_WAIT
        )
    # SQLite's RETURNING cannot name the other tables of an UPDATE ... FROM: read them after.
    return claim.returning(_ri.c.id)


_CLAIMED_ROW = (
    select(*_CLAIM_COLUMNS)
    .join_from(_ri, _iq, _iq.c.id == _ri.c.image_query_id)
    .join(_det, _det.c.id == _ri.c.detector_id)
    .where(_ri.c.id == _P_ITEM)
)


async def claim_next(
    session: AsyncSession,
    user_id: str,
    lease_s: float,
    public_url: str,
    detector_id: str | None = None,
) -> ClaimedItem | None:
    """Lease the next item to this reviewer, or None when nothing is claimable."""
    now = utcnow()
    params = {"p_user": user_id, "p_now": now, "p_expires": now + timedelta(seconds=lease_s)}
    if detector_id is not None:
        params["p_detector"] = detector_id
    row = await _lease_one(session, params, detector_id is not None)
    return None if row is None else _claimed_item(row, lease_s, public_url)


async def _lease_one(
    session: AsyncSession, params: dict[str, Any], by_detector: bool, by_item: bool = False
) -> Any:
    """Run a claim statement: the leased row with its detector and query, or None."""
    if _is_postgres(session):
        async with _autocommit_connection(session) as conn:
            statement = _claim_statement(True, by_detector, by_item)
            return (await conn.execute(statement, params)).mappings().first()
    conn = await session.connection()
    picked = (await conn.execute(_claim_statement(False, by_detector, by_item), params)).first()
    row = None
    if picked is not None:
        row = (await conn.execute(_CLAIMED_ROW, {"p_item": picked.id})).mappings().first()
    await session.commit()
    return row


async def claim_item(
    session: AsyncSession, item_id: int, user_id: str, lease_s: float, public_url: str
) -> ClaimedItem:
    """Lease this one item again, to a reviewer whose lease ran out before the answer (the page sends
    the answer again after it): 409 when someone else holds it now, or it is answered or skipped."""
    now = utcnow()
    params = {
        "p_user": user_id,
        "p_now": now,
        "p_expires": now + timedelta(seconds=lease_s),
        "p_item": item_id,
    }
    row = await _lease_one(session, params, False, by_item=True)
    if row is None:
        raise await _reclaim_conflict(session, item_id, user_id, now)
    return _claimed_item(row, lease_s, public_url)


async def _lease_state(session: AsyncSession, item_id: int) -> Any:
    """The item's status and lease, or a 404 / 409 error when it is gone or already answered."""
    row = (
        await session.execute(
            select(_ri.c.status, _ri.c.lease_owner, _ri.c.lease_expires_at).where(_ri.c.id == item_id)
        )
    ).first()
    if row is None:
        return NotFoundError(f"review item {item_id} not found")
    if row.status != ReviewStatus.PENDING:
        return ConflictError(f"review item {item_id} is already answered")
    return row


async def _reclaim_conflict(session: AsyncSession, item_id: int, user_id: str, now: datetime) -> Exception:
    row = await _lease_state(session, item_id)
    if isinstance(row, Exception):
        return row
    if row.lease_owner not in (None, user_id) and as_utc(row.lease_expires_at) > now:
        return ConflictError(f"another reviewer holds review item {item_id} now")
    return ConflictError(f"review item {item_id} is not offered to you (skipped)")


def _claimed_item(row: Any, lease_s: float, public_url: str) -> ClaimedItem:
    labels = [str(label) for label in row["labels"]]
    result: dict[str, Any] | None = row["result"]
    diagnostics: dict[str, Any] = row["diagnostics"] or {}
    prediction = None
    if result:
        prediction = EdgePrediction(
            label=result.get("label"),
            count=result.get("count"),
            confidence=result.get("confidence"),
            source=result.get("source"),
            from_edge=bool(result.get("from_edge")),
        )
    config: dict[str, Any] = row["mode_configuration"] or {}
    boxed = row["mode"] in {mode.value for mode in BOX_MODES}
    class_name = config.get("class_name") if boxed else None
    # A transient row: max_boxes only reads mode and mode_configuration.
    limit = max_boxes(Detector(mode=row["mode"], mode_configuration=config))
    return ClaimedItem(
        id=row["id"],
        image_query_id=row["image_query_id"],
        detector_id=row["detector_id"],
        detector_name=row["detector_name"],
        query=row["query"],
        mode=row["mode"],
        class_name=class_name if isinstance(class_name, str) else None,
        max_count=limit,
        labels=labels,
        answers=answer_keys(labels),
        image_url=f"{public_url.rstrip('/')}{image_path(row['id'])}",
        prediction=prediction,
        model_rois=rois_from_json(row["rois"]),
        in_domain_score=diagnostics.get("in_domain_score"),
        out_of_domain=diagnostics.get("out_of_domain"),
        uncertainty=row["uncertainty"],
        reason=row["reason"],
        reason_text=why_in_review(
            row["reason"],
            guess=None
            if prediction is None
            else (prediction.label if prediction.count is None else str(prediction.count)),
            confidence=None if prediction is None else prediction.confidence,
            threshold=row["confidence_threshold"],
            in_domain=diagnostics.get("in_domain_score"),
            out_of_domain=diagnostics.get("out_of_domain"),
        ),
        confidence_threshold=row["confidence_threshold"],
        created_at=as_utc(row["query_created_at"]),
        deadline=as_utc(row["deadline"]),
        lease_expires_at=as_utc(row["lease_expires_at"]),
        lease_s=lease_s,
    )


def image_path(item_id: int) -> str:
    return f"/api/v1/review/items/{item_id}/image"


# -- lease conflicts --------------------------------------------------------------------------------------


async def _lease_conflict(
    session: AsyncSession, item_id: int, user_id: str, now: datetime, expiry_matters: bool = True
) -> Exception:
    """Why a lease-guarded write matched no row: 404 or a 409 that says what happened."""
    row = await _lease_state(session, item_id)
    if isinstance(row, Exception):
        return row
    if row.lease_owner != user_id:
        return ConflictError(f"review item {item_id} is not leased to you; claim an item first")
    if expiry_matters and as_utc(row.lease_expires_at) <= now:
        return ConflictError(f"your lease on review item {item_id} has expired; claim again")
    return ConflictError(f"review item {item_id} changed meanwhile; claim again")


_HEARTBEAT = REVIEW_QUEUE.renew(_P_ITEM, _P_USER, _P_NOW, _P_EXPIRES).returning(_ri.c.lease_expires_at)
_HEARTBEAT_NO_FLUSH_WAIT = _HEARTBEAT.returning(_NO_FLUSH_WAIT)


async def heartbeat(session: AsyncSession, item_id: int, user_id: str, lease_s: float) -> LeaseOut:
    """Extend a live lease; only its holder may, and a lease that ran out is gone (409)."""
    now = utcnow()
    params = {
        "p_item": item_id,
        "p_user": user_id,
        "p_now": now,
        "p_expires": now + timedelta(seconds=lease_s),
    }
    expires: Any
    if _is_postgres(session):
        async with _autocommit_connection(session) as conn:
            expires = (await conn.execute(_HEARTBEAT_NO_FLUSH_WAIT, params)).scalar()
    else:
        expires = (await (await session.connection()).execute(_HEARTBEAT, params)).scalar()
        await session.commit()
    if expires is None:
        raise await _lease_conflict(session, item_id, user_id, now)
    return LeaseOut(item_id=item_id, lease_expires_at=as_utc(expires))


# -- answer -----------------------------------------------------------------------------------------------


_ANSWER_CHECK = (
    select(
        _ri.c.status,
        _ri.c.lease_owner,
        _ri.c.lease_expires_at,
        _ri.c.image_query_id,
        _ri.c.detector_id,
        _det.c.mode,
        _det.c.mode_configuration,
        _det.c.labels,
    )
    .join_from(_ri, _det, _det.c.id == _ri.c.detector_id)
    .where(_ri.c.id == _P_ITEM)
)
_P_ANSWER = bindparam("p_answer", type_=String)
_P_ROIS = bindparam("p_rois", type_=RoisJson)

# Closes the item if, and only if, this reviewer still holds a live lease on it; keeps what the image
# query said before (result, done_processing, boxes), for an undo.
_CLOSE_ITEM = (
    REVIEW_QUEUE.as_holder(_P_ITEM, _P_USER, _P_NOW)
    .values(
        status=ReviewStatus.ANSWERED.value,
        answered_by=_P_USER,
        answered_at=_P_NOW,
        answer=_P_ANSWER,
        lease_owner=None,
        lease_expires_at=None,
        prior_result=select(_iq.c.result).where(_iq.c.id == _ri.c.image_query_id).scalar_subquery(),
        prior_done_processing=select(_iq.c.done_processing)
        .where(_iq.c.id == _ri.c.image_query_id)
        .scalar_subquery(),
        prior_rois=select(_iq.c.rois).where(_iq.c.id == _ri.c.image_query_id).scalar_subquery(),
    )
    .returning(_ri.c.id, _ri.c.image_query_id, _ri.c.detector_id)
)
_RESOLVE_QUERY = update(_iq).values(
    result=bindparam("p_result", type_=JSON), rois=_P_ROIS, done_processing=True
)
_LABEL_COLUMNS = [
    "image_query_id",
    "detector_id",
    "label",
    "source",
    "user_id",
    "review_item_id",
    "created_at",
    "rois",
]


def _answer_in_one_statement() -> Any:
    """PostgreSQL: data-modifying CTEs share one snapshot, so `prior_result` reads the old result."""
    closed = _CLOSE_ITEM.cte("closed_item")
    resolved = (
        _RESOLVE_QUERY.where(_iq.c.id == closed.c.image_query_id).returning(_iq.c.id).cte("resolved_query")
    )
    new_label = (
        insert(_lab)
        .from_select(
            _LABEL_COLUMNS,
            select(
                closed.c.image_query_id,
                closed.c.detector_id,
                _P_ANSWER,
                literal(LabelSource.HUMAN.value, String),
                _P_USER,
                closed.c.id,
                _P_NOW,
                _P_ROIS,
            ),
        )
        .returning(_lab.c.id)
        .cte("new_label")
    )
    return select(new_label.c.id).add_cte(resolved)


_ANSWER_IN_ONE_STATEMENT = _answer_in_one_statement()
_RESOLVE_ONE_QUERY = _RESOLVE_QUERY.where(_iq.c.id == bindparam("p_query", type_=String))
_INSERT_LABEL = insert(_lab).returning(_lab.c.id)


async def answer_item(
    session: AsyncSession,
    item_id: int,
    user_id: str,
    raw_label: str | int,
    rois: list[Roi] | None = None,
) -> AnswerOut:
    """Store the reviewer's answer exactly once: label and boxes, item closed, image query resolved
    (confidence 1) with those boxes as its rois. Boxes follow cloud.app.core.labels' rules (400)."""
    now = utcnow()
    row: Any
    if _is_postgres(session):
        # Each statement is atomic on its own (the write re-checks the lease), so no BEGIN/COMMIT.
        async with _autocommit_connection(session) as conn:
            row = (await conn.execute(_ANSWER_CHECK, {"p_item": item_id})).mappings().first()
            answer, params = _answer_params(row, item_id, user_id, raw_label, rois, now)
            label_id = None
            if params is not None:
                label_id = (await conn.execute(_ANSWER_IN_ONE_STATEMENT, params)).scalar()
    else:
        conn = await session.connection()
        row = (await conn.execute(_ANSWER_CHECK, {"p_item": item_id})).mappings().first()
        answer, params = _answer_params(row, item_id, user_id, raw_label, rois, now)
        label_id = await _answer_step_by_step(conn, params) if params else None
        if label_id is None:
            await session.rollback()
        else:
            await session.commit()
    if label_id is None:  # not (or no longer) this reviewer's live lease
        raise await _lease_conflict(session, item_id, user_id, now)
    return AnswerOut(item_id=item_id, image_query_id=row["image_query_id"], label=answer, label_id=label_id)


def _answer_params(
    row: Any, item_id: int, user_id: str, raw_label: str | int, rois: list[Roi] | None, now: datetime
) -> tuple[str, dict[str, Any] | None]:
    """The validated answer and the write's parameters; no parameters when the lease is not live."""
    if (
        row is None
        or row["status"] != ReviewStatus.PENDING
        or row["lease_owner"] != user_id
        or as_utc(row["lease_expires_at"]) <= now
    ):
        return "", None
    # A transient row: the shared helpers only read mode, its configuration and labels.
    detector = Detector(
        id=row["detector_id"],
        mode=row["mode"],
        mode_configuration=row["mode_configuration"],
        labels=row["labels"],
    )
    answer = answer_rules(detector, str(raw_label), rois)
    result = human_result(detector, answer, HUMAN_RESULT_SOURCE).model_dump(mode="json")
    return answer, {
        "p_item": item_id,
        "p_user": user_id,
        "p_now": now,
        "p_answer": answer,
        "p_result": result,
        "p_rois": rois_json(rois),
    }


async def _answer_step_by_step(conn: AsyncConnection, params: dict[str, Any]) -> int | None:
    """SQLite: the guarded UPDATE takes the write lock first, so the next two cannot interleave."""
    closed = (await conn.execute(_CLOSE_ITEM, params)).first()
    if closed is None:
        return None
    await conn.execute(_RESOLVE_ONE_QUERY, {**params, "p_query": closed.image_query_id})
    label_id: int = (
        await conn.execute(
            _INSERT_LABEL,
            {
                "image_query_id": closed.image_query_id,
                "detector_id": closed.detector_id,
                "label": params["p_answer"],
                "source": LabelSource.HUMAN.value,
                "user_id": params["p_user"],
                "review_item_id": closed.id,
                "created_at": params["p_now"],
                "rois": params["p_rois"],
            },
        )
    ).scalar_one()
    return label_id


# -- skip, release, undo ----------------------------------------------------------------------------------


async def _drop_lease(session: AsyncSession, item_id: int, user_id: str, now: datetime) -> None:
    """Give the lease back (its holder only; a lapsed lease nobody took is still theirs to give)."""
    released = (
        await session.execute(REVIEW_QUEUE.release(item_id, user_id, claimed_at=None).returning(_ri.c.id))
    ).scalar_one_or_none()
    if released is None:
        error = await _lease_conflict(session, item_id, user_id, now, expiry_matters=False)
        await session.rollback()
        raise error


async def skip_item(session: AsyncSession, item_id: int, user_id: str) -> None:
    """Back to the queue for everybody else; this reviewer will not be offered it again."""
    await _drop_lease(session, item_id, user_id, utcnow())
    await session.execute(
        insert_ignoring_duplicates(
            session,
            ReviewSkip,
            {"review_item_id": item_id, "user_id": user_id, "created_at": utcnow()},
            index_elements=["review_item_id", "user_id"],
        )
    )
    await session.commit()


async def skipped_items(session: AsyncSession, user_id: str, limit: int = 100) -> list[SkippedItem]:
    """This reviewer's skips of items still waiting for an answer, latest first."""
    rows = await session.execute(
        select(
            _skip.c.review_item_id,
            _skip.c.created_at,
            _ri.c.image_query_id,
            _ri.c.detector_id,
            _det.c.name,
            _det.c.query,
        )
        .join_from(_skip, _ri, _ri.c.id == _skip.c.review_item_id)
        .join(_det, _det.c.id == _ri.c.detector_id)
        .where(_skip.c.user_id == user_id, _ri.c.status == _PENDING)
        .order_by(_skip.c.created_at.desc(), _skip.c.review_item_id.desc())
        .limit(limit)
    )
    return [
        SkippedItem(
            item_id=row.review_item_id,
            image_query_id=row.image_query_id,
            detector_id=row.detector_id,
            detector_name=row.name,
            query=row.query,
            skipped_at=as_utc(row.created_at),
        )
        for row in rows
    ]


async def unskip_item(session: AsyncSession, item_id: int, user_id: str) -> None:
    """Offer the item to this reviewer again; 404 when they had not skipped it."""
    gone = await session.execute(
        _skip.delete().where(_skip.c.review_item_id == item_id, _skip.c.user_id == user_id)
    )
    await session.commit()
    if not cast(Any, gone).rowcount:
        raise NotFoundError(f"you have not skipped review item {item_id}")


async def set_excluded(session: AsyncSession, user_id: str, detector_id: str, excluded: bool) -> None:
    """Leave a detector out of this reviewer's "Label all queues", or take it back in (404: no such detector)."""
    if await session.get(Detector, detector_id) is None:
        raise NotFoundError(f"detector {detector_id[:60]} not found")
    if excluded:
        await session.execute(
            insert_ignoring_duplicates(
                session,
                ReviewExclusion,
                {"user_id": user_id, "detector_id": detector_id, "created_at": utcnow()},
                index_elements=["user_id", "detector_id"],
            )
        )
    else:
        await session.execute(
            _excl.delete().where(_excl.c.user_id == user_id, _excl.c.detector_id == detector_id)
        )
    await session.commit()


async def release_item(session: AsyncSession, item_id: int, user_id: str) -> None:
    """Back to the queue for everybody, this reviewer included (the page closes, an undo reshuffles)."""
    await _drop_lease(session, item_id, user_id, utcnow())
    await session.commit()


async def undo_last(session: AsyncSession, user_id: str, item_id: int | None = None) -> UndoOut:
    """Take back this reviewer's latest answer still standing (or their answer to `item_id`): the label
    is marked undone (history is kept), the item is pending again without a lease, and the image query
    gets its earlier result back. Repeated undos walk further back."""
    now = utcnow()
    pick = (
        select(
            _ri.c.id,
            _ri.c.image_query_id,
            _ri.c.answer,
            _ri.c.prior_result,
            _ri.c.prior_done_processing,
            _ri.c.prior_rois,
        )
        .where(_ri.c.answered_by == user_id, _ri.c.status == _ANSWERED)
        .order_by(_ri.c.answered_at.desc(), _ri.c.id.desc())
        .limit(1)
    )
    if item_id is not None:
        pick = pick.where(_ri.c.id == item_id)
    last = (await session.execute(pick)).first()
    if last is None:
        raise NotFoundError(
            "you have no answer to undo"
            if item_id is None
            else f"review item {item_id} has no standing answer of yours"
        )
    reopened = (
        await session.execute(
            update(_ri)
            .where(_ri.c.id == last.id, _ri.c.status == _ANSWERED, _ri.c.answered_by == user_id)
            .values(
                # Held, not pending, when its detector was deleted meanwhile: it stays out of the queue.
                status=case(
                    (
                        exists().where(_det.c.id == _ri.c.detector_id, _det.c.deleted_at.is_not(None)),
                        ReviewStatus.HELD.value,
                    ),
                    else_=ReviewStatus.PENDING.value,
                ),
                answered_by=None,
                answered_at=None,
                answer=None,
                lease_owner=None,
                lease_expires_at=None,
                claimed_at=None,
                prior_result=None,
                prior_done_processing=None,
                prior_rois=None,
            )
            .returning(_ri.c.id)
        )
    ).scalar_one_or_none()
    if reopened is None:
        await session.rollback()
        raise ConflictError("that answer was undone meanwhile")
    await session.execute(
        update(_lab)
        .where(
            _lab.c.image_query_id == last.image_query_id,
            _lab.c.review_item_id == last.id,
            _lab.c.undone_at.is_(None),
        )
        .values(undone_at=now)
    )
    await session.execute(
        update(_iq)
        .where(_iq.c.id == last.image_query_id)
        .values(
            result=last.prior_result,
            done_processing=bool(last.prior_done_processing),
            rois=last.prior_rois,
        )
    )
    await session.commit()
    return UndoOut(item_id=last.id, image_query_id=last.image_query_id, label=last.answer or "")


# -- queues and images ------------------------------------------------------------------------------------


async def queue_summaries(session: AsyncSession, user_id: str) -> list[QueueSummary]:
    """Per detector: pending items, those this reviewer could claim now, answers in the last hour."""
    now = utcnow()
    free = and_(
        REVIEW_QUEUE.free(now),
        ~exists().where(_skip.c.review_item_id == _ri.c.id, _skip.c.user_id == user_id),
    )
    pending = {
        r.detector_id: (int(r.pending), int(r.claimable or 0))
        for r in await session.execute(
            select(
                _ri.c.detector_id,
                func.count().label("pending"),
                func.sum(case((free, 1), else_=0)).label("claimable"),
            )
            .where(_ri.c.status == _PENDING)
            .group_by(_ri.c.detector_id)
        )
    }
    answered = {
        r.detector_id: int(r.answered)
        for r in await session.execute(
            select(_ri.c.detector_id, func.count().label("answered"))
            .where(_ri.c.answered_at >= now - timedelta(hours=1), _ri.c.status == _ANSWERED)
            .group_by(_ri.c.detector_id)
        )
    }
    excluded = set(
        (await session.execute(select(_excl.c.detector_id).where(_excl.c.user_id == user_id))).scalars()
    )
    detectors = await session.execute(
        select(_det.c.id, _det.c.name, _det.c.query, _det.c.mode)
        .where(_det.c.deleted_at.is_(None))
        .order_by(_det.c.name)
    )
    await session.commit()
    return [
        QueueSummary(
            detector_id=d.id,
            detector_name=d.name,
            query=d.query,
            mode=d.mode,
            pending=pending.get(d.id, (0, 0))[0],
            claimable=pending.get(d.id, (0, 0))[1],
            answered_last_hour=answered.get(d.id, 0),
            in_label_all=d.id not in excluded,
        )
        for d in detectors
    ]


@dataclass(frozen=True)
class ItemImage:
    data: bytes
    content_type: str


async def item_image(session: AsyncSession, blobs: BlobStore, item_id: int) -> ItemImage:
    """The image under review, straight from the blob store (404 when the item or the blob is missing)."""
    row = (
        await session.execute(
            select(_iq.c.image_key, _iq.c.image_content_type)
            .join_from(_ri, _iq, _iq.c.id == _ri.c.image_query_id)
            .where(_ri.c.id == item_id)
        )
    ).first()
    await session.commit()
    if row is None:
        raise NotFoundError(f"review item {item_id} not found")
    return await image_of(blobs, row.image_key, row.image_content_type)


async def image_of(blobs: BlobStore, key: str, content_type: str | None) -> ItemImage:
    """An image query's picture from the blob store (BlobNotFoundError: a 404)."""
    try:
        data = await blobs.get(key)
    except ValueError:  # a key the store refuses cannot name a stored blob
        raise BlobNotFoundError(key) from None
    return ItemImage(data, content_type or "application/octet-stream")
