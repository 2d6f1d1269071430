"""Lease queues: claim, heartbeat, expiry and release, written once for every table that hands rows out.

Review items, training jobs, dataset exports and webhook deliveries are all queues whose rows are leased
to one holder at a time: an owner name plus an expiry, in the row. The part that is easy to get subtly
wrong (a claim must never hand one row to two holders; every later write must re-check the lease in its
own WHERE, so a holder that lost it matches no row) is the same for all of them, so it lives here, as
SQLAlchemy statements that each queue runs and extends with its own values, conditions and RETURNING.

- claim: `UPDATE t SET <lease> WHERE id = (SELECT id FROM t WHERE <claimable> ORDER BY ... LIMIT 1
  FOR UPDATE SKIP LOCKED)` (`id IN (...)` for a batch). On PostgreSQL concurrent claimers skip the rows
  another transaction is taking instead of waiting for them; on SQLite the one statement takes the write
  lock up front, so it is atomic there as well.
- claimable: waiting, or leased with a lease that ran out (`expires <= now`). A queue whose rows keep
  their status while leased (review items, deliveries: `waiting == leased`) only asks for a free lease.
- renew (heartbeat), release and the holder's other writes match only while the owner holds the row
  (leased status, its name); renew also asks for a live lease unless the queue lets a holder renew a
  lapsed lease nobody took (`renew_lapsed`). The row count tells the caller whether it still held it.
- expire: the sweep that gives rows whose holder stopped renewing back to the queue.

`now` and the owner may be values or bound parameters, so hot statements can be built once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, String, Table, Update, and_, literal_column, or_, select, update

# A value, or a bound parameter of a statement built once.
Now = datetime | ColumnElement[datetime]
Owner = str | ColumnElement[str]

_STATUS = re.compile(r"[a-z_]+")


@dataclass(frozen=True, eq=False)
class LeaseQueue:
    """One table's lease queue. `order`: claim order, column names, "-name" for descending; end it with
    a unique column so that ties are broken the same way every time."""

    table: Table
    waiting: str
    leased: str
    order: tuple[str, ...]
    renew_lapsed: bool = False
    id_column: str = "id"
    status_column: str = "status"
    owner_column: str = "lease_owner"
    expires_column: str = "lease_expires_at"

    def __post_init__(self) -> None:
        # Statuses go into the SQL text (see `_status`), so they must be plain words.
        for status in (self.waiting, self.leased):
            if not _STATUS.fullmatch(status):
                raise ValueError(f"status {status!r} is not a plain lowercase word")

    # -- columns and conditions ------------------------------------------------------------------------

    @property
    def id(self) -> ColumnElement[Any]:
        return self.table.c[self.id_column]

    @property
    def status(self) -> ColumnElement[str]:
        return self.table.c[self.status_column]

    @property
    def owner(self) -> ColumnElement[str | None]:
        return self.table.c[self.owner_column]

    @property
    def expires(self) -> ColumnElement[datetime | None]:
        return self.table.c[self.expires_column]

    def _status(self, value: str) -> ColumnElement[bool]:
        # A literal, not a bound parameter: PostgreSQL only uses a partial index (WHERE status = '...')
        # when it can prove the predicate from the query text, generic prepared-statement plans included.
        return self.status == literal_column(f"'{value}'", String)

    def free(self, now: Now) -> ColumnElement[bool]:
        """Nobody holds a live lease on the row."""
        return or_(self.expires.is_(None), self.expires <= now)

    def lapsed(self, now: Now) -> ColumnElement[bool]:
        """Leased, and the lease ran out: its holder stopped renewing."""
        return and_(self._status(self.leased), self.expires.is_not(None), self.expires <= now)

    def claimable(self, now: Now) -> ColumnElement[bool]:
        if self.waiting == self.leased:
            return and_(self._status(self.waiting), self.free(now))
        return or_(self._status(self.waiting), self.lapsed(now))

    def held_by(self, owner: Owner, now: Now | None = None) -> ColumnElement[bool]:
        """`owner` holds the row (with `now`: and its lease is still live)."""
        held = and_(self._status(self.leased), self.owner == owner)
        return held if now is None else and_(held, self.expires > now)

    # -- statements ------------------------------------------------------------------------------------

    def pick(
        self, now: Now, *where: ColumnElement[bool], limit: int = 1, retake: Owner | None = None
    ) -> Select[Any]:
        """The ids of the next claimable rows, locked, skipping rows locked by others. `retake`: rows
        this owner holds count as claimable too (to lease them again)."""
        claimable = self.claimable(now) if retake is None else or_(self.claimable(now), self.held_by(retake))
        ordering = [
            self.table.c[name[1:]].desc() if name[0] == "-" else self.table.c[name] for name in self.order
        ]
        return (
            select(self.id)
            .where(claimable, *where)
            .order_by(*ordering)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )

    def claim(
        self,
        owner: Owner,
        expires: Now,
        now: Now,
        *where: ColumnElement[bool],
        limit: int = 1,
        retake: bool = False,
        **values: Any,
    ) -> Update:
        """Lease the next claimable row (up to `limit` rows) matching `where` to `owner` until
        `expires`, setting `values` as well. Add `.returning(...)` to learn which rows."""
        # Its own FROM: not correlated to the UPDATE's table, or the pick would compare each row with itself.
        chosen = self.pick(now, *where, limit=limit, retake=owner if retake else None).correlate(None)
        target = self.id == chosen.scalar_subquery() if limit == 1 else self.id.in_(chosen)
        lease: dict[str, Any] = {self.owner_column: owner, self.expires_column: expires}
        if self.leased != self.waiting:
            lease[self.status_column] = self.leased
        return update(self.table).where(target).values({**lease, **values})

    def as_holder(self, row_id: Any, owner: Owner, now: Now | None = None) -> Update:
        """An UPDATE of this row that applies only while `owner` holds it (with `now`: a live lease);
        add `.values(...)`."""
        return update(self.table).where(self.id == row_id, self.held_by(owner, now))

    def renew(self, row_id: Any, owner: Owner, now: Now, expires: Now) -> Update:
        """The heartbeat: the lease now runs until `expires`, if `owner` still holds it."""
        holder = self.as_holder(row_id, owner, None if self.renew_lapsed else now)
        return holder.values({self.expires_column: expires})

    def release(self, row_id: Any, owner: Owner, **values: Any) -> Update:
        """The holder gives the row back to the queue (a lapsed lease nobody took is still its to give)."""
        return self.as_holder(row_id, owner).values({**self._unleased(), **values})

    def expire(self, now: Now, *where: ColumnElement[bool], **values: Any) -> Update:
        """Rows whose lease ran out go back to the queue."""
        return update(self.table).where(self.lapsed(now), *where).values({**self._unleased(), **values})

    def _unleased(self) -> dict[str, Any]:
        values: dict[str, Any] = {self.owner_column: None, self.expires_column: None}
        if self.leased != self.waiting:
            values[self.status_column] = self.waiting
        return values
