"""cloud.app.core.lease_queue against the test database: a table of this module's own (unique name, the
session's database is shared), in both shapes a queue takes (rows that change status while leased,
and rows that keep it)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from sqlalchemy import Column, CursorResult, DateTime, Integer, MetaData, String, Table, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from cloud.app.core.lease_queue import LeaseQueue
from cloud.app.db.engine import make_engine
from cloud.app.settings import to_async_url
from common.clock import as_utc
from tests.support import cloud as support

LEASE = timedelta(seconds=60)


def now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture(scope="module")
def table() -> Table:
    return Table(
        f"lease_queue_{secrets.token_hex(4)}",
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("status", String(20), nullable=False),
        Column("rank", Integer, nullable=False),
        Column("lease_owner", String(40), nullable=True),
        Column("lease_expires_at", DateTime(timezone=True), nullable=True),
        Column("note", String(40), nullable=True),
    )


@pytest.fixture
async def engine(cloud_db: support.TestDatabase, table: Table) -> AsyncIterator[AsyncEngine]:
    """The table, emptied for each test (and dropped after it)."""
    engine = make_engine(to_async_url(cloud_db.url), pool_size=4)
    async with engine.begin() as conn:
        await conn.run_sync(table.metadata.drop_all)
        await conn.run_sync(table.metadata.create_all)
    try:
        yield engine
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(table.metadata.drop_all)
        await engine.dispose()


def jobs(table: Table) -> LeaseQueue:
    """Rows go queued -> running while leased; the highest rank first, then the lowest id."""
    return LeaseQueue(table, waiting="queued", leased="running", order=("-rank", "id"))


def items(table: Table) -> LeaseQueue:
    """Rows stay pending while leased: the lease columns alone say who holds one."""
    return LeaseQueue(table, waiting="pending", leased="pending", order=("id",))


async def add(engine: AsyncEngine, table: Table, status: str, *ranks: int, **values: Any) -> None:
    async with engine.begin() as conn:
        first = (await conn.execute(select(text("count(*)")).select_from(table))).scalar_one()
        rows = [
            {"id": first + i + 1, "status": status, "rank": rank, **values} for i, rank in enumerate(ranks)
        ]
        await conn.execute(insert(table), rows)


async def claim(engine: AsyncEngine, queue: LeaseQueue, owner: str, **kwargs: Any) -> list[int]:
    moment = now()
    async with engine.begin() as conn:
        statement = queue.claim(owner, moment + LEASE, moment, **kwargs).returning(queue.id)
        return sorted((await conn.execute(statement)).scalars())


async def run(engine: AsyncEngine, statement: Any) -> int:
    async with engine.begin() as conn:
        return cast(CursorResult[Any], await conn.execute(statement)).rowcount


async def row(engine: AsyncEngine, table: Table, row_id: int) -> Any:
    async with engine.connect() as conn:
        return (await conn.execute(select(table).where(table.c.id == row_id))).one()


async def expire_now(engine: AsyncEngine, table: Table, row_id: int) -> None:
    await run(engine, table.update().where(table.c.id == row_id).values(lease_expires_at=now() - LEASE))


def test_statuses_must_be_plain_words(table: Table) -> None:
    with pytest.raises(ValueError, match="plain lowercase word"):
        LeaseQueue(table, waiting="queued' OR '1", leased="running", order=("id",))


async def test_a_claim_takes_the_first_row_in_order_and_skips_leased_ones(
    engine: AsyncEngine, table: Table
) -> None:
    queue = jobs(table)
    await add(engine, table, "queued", 1, 5, 5, 3)  # ids 1..4
    await add(engine, table, "succeeded", 9)  # id 5: finished, never claimable
    assert await claim(engine, queue, "a") == [2]  # rank 5, lowest id
    assert await claim(engine, queue, "b") == [3]
    assert await claim(engine, queue, "c", limit=5) == [1, 4]
    assert await claim(engine, queue, "d") == []
    taken = await row(engine, table, 2)
    assert taken.status == "running" and taken.lease_owner == "a" and taken.lease_expires_at is not None


async def test_extra_conditions_and_values_go_into_the_claim(engine: AsyncEngine, table: Table) -> None:
    queue = jobs(table)
    await add(engine, table, "queued", 1, 2)
    moment = now()
    async with engine.begin() as conn:
        statement = queue.claim("a", moment + LEASE, moment, table.c.rank < 2, note="picked").returning(
            queue.id
        )
        assert list((await conn.execute(statement)).scalars()) == [1]
    assert (await row(engine, table, 1)).note == "picked"


async def test_an_expired_lease_makes_the_row_claimable_again(engine: AsyncEngine, table: Table) -> None:
    for queue, status in ((jobs(table), "queued"), (items(table), "pending")):
        await add(engine, table, status, 1)
        (row_id,) = await claim(engine, queue, "gone")
        assert await claim(engine, queue, "other") == []
        await expire_now(engine, table, row_id)
        assert await claim(engine, queue, "other") == [row_id]
        assert (await row(engine, table, row_id)).lease_owner == "other"
        # The holder that lost it can no longer renew or release it.
        assert await run(engine, queue.renew(row_id, "gone", now(), now() + LEASE)) == 0
        assert await run(engine, queue.release(row_id, "gone")) == 0


async def test_the_sweep_returns_lapsed_rows_to_the_queue(engine: AsyncEngine, table: Table) -> None:
    queue = jobs(table)
    await add(engine, table, "queued", 1, 1)
    lapsed, live = await claim(engine, queue, "a", limit=2)
    await expire_now(engine, table, lapsed)
    assert await run(engine, queue.expire(now())) == 1
    back, held = await row(engine, table, lapsed), await row(engine, table, live)
    assert (back.status, back.lease_owner, back.lease_expires_at) == ("queued", None, None)
    assert (held.status, held.lease_owner) == ("running", "a")
    # Rows that keep their status: only the lease goes.
    pending = items(table)
    await add(engine, table, "pending", 1)
    (item,) = await claim(engine, pending, "b")
    await expire_now(engine, table, item)
    assert await run(engine, pending.expire(now())) == 1
    gone = await row(engine, table, item)
    assert (gone.status, gone.lease_owner, gone.lease_expires_at) == ("pending", None, None)


async def test_renew_is_the_holders_only_and_stops_at_the_end(engine: AsyncEngine, table: Table) -> None:
    queue = jobs(table)
    await add(engine, table, "queued", 1)
    (row_id,) = await claim(engine, queue, "a")
    later = now() + 3 * LEASE
    assert await run(engine, queue.renew(row_id, "intruder", now(), later)) == 0
    assert await run(engine, queue.renew(row_id, "a", now(), later)) == 1
    assert as_utc((await row(engine, table, row_id)).lease_expires_at) == later
    # Finished: nobody renews it any more.
    await run(engine, queue.as_holder(row_id, "a").values(status="succeeded", lease_expires_at=None))
    assert await run(engine, queue.renew(row_id, "a", now(), later)) == 0


async def test_a_lapsed_lease_is_renewable_only_where_the_queue_says_so(
    engine: AsyncEngine, table: Table
) -> None:
    strict = items(table)
    lenient = LeaseQueue(table, waiting="pending", leased="pending", order=("id",), renew_lapsed=True)
    await add(engine, table, "pending", 1)
    (row_id,) = await claim(engine, strict, "a")
    await expire_now(engine, table, row_id)
    assert await run(engine, strict.renew(row_id, "a", now(), now() + LEASE)) == 0
    assert await run(engine, lenient.renew(row_id, "a", now(), now() + LEASE)) == 1
    assert await run(engine, lenient.renew(row_id, "b", now(), now() + LEASE)) == 0


async def test_release_gives_the_row_back_and_only_its_holder_may(engine: AsyncEngine, table: Table) -> None:
    queue = jobs(table)
    await add(engine, table, "queued", 1)
    (row_id,) = await claim(engine, queue, "a")
    assert await run(engine, queue.release(row_id, "intruder")) == 0
    assert await run(engine, queue.release(row_id, "a", note="released")) == 1
    back = await row(engine, table, row_id)
    assert (back.status, back.lease_owner, back.lease_expires_at, back.note) == (
        "queued",
        None,
        None,
        "released",
    )
    assert await claim(engine, queue, "b") == [row_id]


async def test_retake_leases_a_row_its_owner_holds_again(engine: AsyncEngine, table: Table) -> None:
    queue = items(table)
    await add(engine, table, "pending", 1)
    (row_id,) = await claim(engine, queue, "a")
    assert await claim(engine, queue, "b", retake=True) == []
    assert await claim(engine, queue, "a", retake=True) == [row_id]


async def test_concurrent_claims_never_hand_out_a_row_twice(engine: AsyncEngine, table: Table) -> None:
    queue = jobs(table)
    await add(engine, table, "queued", *range(40))

    async def claimer(name: str) -> list[int]:
        got: list[int] = []
        while taken := await claim(engine, queue, name):
            got += taken
        return got

    results = await asyncio.gather(*(claimer(f"w{i}") for i in range(4)))
    handed_out = [row_id for got in results for row_id in got]
    assert sorted(handed_out) == list(range(1, 41))


@pytest.mark.postgres_only
async def test_a_claim_skips_a_row_another_transaction_has_locked(engine: AsyncEngine, table: Table) -> None:
    queue = jobs(table)
    await add(engine, table, "queued", 2, 1)  # id 1 comes first
    async with engine.connect() as holder:
        transaction = await holder.begin()
        locked = select(table.c.id).where(table.c.id == 1).with_for_update()
        assert (await holder.execute(locked)).scalar_one() == 1
        # Neither waits for the lock nor takes the locked row.
        assert await asyncio.wait_for(claim(engine, queue, "b"), timeout=10) == [2]
        assert await asyncio.wait_for(claim(engine, queue, "c"), timeout=10) == []
        await transaction.rollback()
    assert await claim(engine, queue, "c") == [1]
