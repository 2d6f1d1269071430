"""The edge's SQLite database: a local record of answered image queries, the escalation outbox, the
alert firings waiting for the cloud (edge.api.alerts), and the label priors of detectors without a
model (edge.api.core.priors) and the device tokens the cloud vouched for (edge.api.auth.verdicts, by
sha256 only), kept so they answer after a restart with the cloud unreachable.

Both live in one file so that recording a query and queueing its escalation is one transaction:
a crash can never leave an escalated query without its outbox entry or the reverse. Plain records
commit with synchronous=NORMAL (no fsync, WAL keeps them consistent); anything that queues an
escalation commits on a second connection with synchronous=FULL, which fsyncs before we answer.
All writes go through one thread, so the two writing connections never contend; lookups by id use a
third, read-only connection from the event loop (WAL readers neither wait for nor block writers), which
is cheaper than a thread hop on every request.

A query record keeps what a retry must match to get its answer back (common.validation): its
detector, the sha256 of its image and the idempotency key of the request that made it (`request_id`,
common.validation.idempotency_key: never a cut id).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS image_queries (
    id TEXT PRIMARY KEY,
    request_id TEXT UNIQUE,
    detector_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    body TEXT NOT NULL,
    image_sha256 TEXT
);
CREATE TABLE IF NOT EXISTS outbox (
    image_query_id TEXT PRIMARY KEY,
    detector_id TEXT NOT NULL,
    reason TEXT NOT NULL,
    payload TEXT NOT NULL,
    image BLOB NOT NULL,
    content_type TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_state_created ON outbox (state, created_at);
CREATE TABLE IF NOT EXISTS priors (
    detector_id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    fetched_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_firings (
    firing_id TEXT PRIMARY KEY,
    detector_id TEXT NOT NULL,
    body TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS alert_firings_state_created ON alert_firings (state, created_at);
CREATE TABLE IF NOT EXISTS token_verdicts (
    token_sha256 TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    username TEXT NOT NULL,
    email TEXT NOT NULL,
    checked_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
"""


# Columns added after a database may already have been created: (table, column, declaration).
_ADDED_COLUMNS = (("image_queries", "image_sha256", "TEXT"),)
_RECORD_COLUMNS = "id, request_id, detector_id, image_sha256, body"
_INSERT_RECORD = (
    "INSERT INTO image_queries (id, request_id, detector_id, image_sha256, created_at, body)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class StoredQuery:
    image_query_id: str
    request_key: str | None
    detector_id: str
    image_sha256: str | None
    body: str


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, taken at once (BEGIN IMMEDIATE), rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


@dataclass(frozen=True)
class OutboxItem:
    image_query_id: str
    detector_id: str
    reason: str
    payload: str
    image: bytes
    content_type: str
    created_at: float
    attempts: int


@dataclass(frozen=True)
class VerdictRow:
    """The cloud's word on one device token, by its sha256 (the token itself is never stored)."""

    token_sha256: str
    role: str
    username: str
    email: str
    checked_at: float
    expires_at: float


@dataclass(frozen=True)
class OutboxDepth:
    pending: int
    dead: int
    oldest_pending_age_s: float | None


@dataclass(frozen=True)
class StoredFiring:
    """An alert firing as kept until the cloud records it; `body` is its AlertFiring JSON."""

    firing_id: str
    detector_id: str
    body: str
    created_at: float
    attempts: int = 0


class EdgeStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="edge-db")
        self._fast: sqlite3.Connection | None = None
        self._durable: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._inline: sqlite3.Connection | None = None

    async def run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def open(self) -> None:
        await self.run(self._open)

    def _open(self) -> None:
        self._fast = self._connect("NORMAL")
        self._fast.executescript(SCHEMA)
        self._add_missing_columns(self._fast)
        self._durable = self._connect("FULL")
        self._reader = sqlite3.connect(
            f"file:{self.path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
        self._reader.execute("PRAGMA busy_timeout=1000")
        # Event-loop writes must never wait: no busy timeout, fall back to the thread when locked.
        self._inline = self._connect("NORMAL")
        self._inline.execute("PRAGMA busy_timeout=0")

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={synchronous}")
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    @staticmethod
    def _add_missing_columns(conn: sqlite3.Connection) -> None:
        """Bring a database made by an older edge up to SCHEMA (its rows keep NULL there)."""
        for table, column, declaration in _ADDED_COLUMNS:
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    async def close(self) -> None:
        def _close() -> None:
            for conn in (self._fast, self._durable, self._reader, self._inline):
                if conn is not None:
                    conn.close()

        await self.run(_close)
        self._pool.shutdown(wait=True)

    @property
    def fast(self) -> sqlite3.Connection:
        assert self._fast is not None, "store is not open"
        return self._fast

    @property
    def durable(self) -> sqlite3.Connection:
        assert self._durable is not None, "store is not open"
        return self._durable

    # -- image query records ---------------------------------------------------------------------
    def lookup_query(self, image_query_id: str) -> str | None:
        """The stored JSON body of a query, from the event loop: an indexed read, no thread hop."""
        found = self.lookup_records(image_query_id, None)
        return found[0].body if found else None

    def lookup_records(self, image_query_id: str | None, request_key: str | None) -> list[StoredQuery]:
        """`find_records` from the event loop."""
        assert self._reader is not None, "store is not open"
        return self.find_records(image_query_id, request_key, self._reader)

    def find_records(
        self, image_query_id: str | None, request_key: str | None, conn: sqlite3.Connection | None = None
    ) -> list[StoredQuery]:
        """The records holding this image query id or this idempotency key (none, one, or two)."""
        conn = conn or self.fast
        found: list[StoredQuery] = []
        for column, value in (("id", image_query_id), ("request_id", request_key)):
            if not value:
                continue
            row = conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM image_queries WHERE {column} = ?", (value,)
            ).fetchone()
            if row and all(r.image_query_id != row[0] for r in found):
                found.append(StoredQuery(str(row[0]), row[1], str(row[2]), row[3], str(row[4])))
        return found

    def record_query(
        self,
        image_query_id: str,
        request_key: str | None,
        detector_id: str,
        image_sha256: str | None,
        body: str,
        escalation: OutboxItem | None,
    ) -> None:
        """Store the answered query, and its escalation in the same durable transaction if any.
        sqlite3.IntegrityError when its id or key is taken."""
        conn = self.durable if escalation is not None else self.fast
        with _immediate(conn):
            conn.execute(
                _INSERT_RECORD,
                (image_query_id, request_key, detector_id, image_sha256, time.time(), body),
            )
            if escalation is not None:
                self._insert_outbox(conn, escalation)

    def try_record_inline(
        self,
        image_query_id: str,
        request_key: str | None,
        detector_id: str,
        image_sha256: str | None,
        body: str,
    ) -> bool:
        """Record a query that escalates nothing from the event loop (no fsync, microseconds).

        False when another writer holds the lock (an fsync in progress): the caller then takes the
        thread path instead of blocking the loop.
        """
        assert self._inline is not None, "store is not open"
        try:
            self._inline.execute(
                _INSERT_RECORD,
                (image_query_id, request_key, detector_id, image_sha256, time.time(), body),
            )
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False
            raise
        return True

    def update_query(self, image_query_id: str, body: str) -> None:
        self.fast.execute("UPDATE image_queries SET body = ? WHERE id = ?", (body, image_query_id))

    def count_queries(self) -> int:
        return int(self.fast.execute("SELECT COUNT(*) FROM image_queries").fetchone()[0])

    # -- label priors ------------------------------------------------------------------------------
    def save_prior(self, detector_id: str, body: str, fetched_at: float) -> None:
        self.fast.execute(
            "INSERT INTO priors (detector_id, body, fetched_at) VALUES (?, ?, ?)"
            " ON CONFLICT (detector_id) DO UPDATE SET body = excluded.body, fetched_at = excluded.fetched_at",
            (detector_id, body, fetched_at),
        )

    def forget_prior(self, detector_id: str) -> None:
        self.fast.execute("DELETE FROM priors WHERE detector_id = ?", (detector_id,))

    def load_priors(self) -> list[tuple[str, str, float]]:
        """(detector_id, DetectorPrior JSON, fetched_at) of every prior kept."""
        rows = self.fast.execute("SELECT detector_id, body, fetched_at FROM priors").fetchall()
        return [(str(d), str(b), float(f)) for d, b, f in rows]

    # -- device tokens the cloud vouched for ------------------------------------------------------
    def save_verdict(self, row: VerdictRow, keep: int) -> None:
        """Keep one verdict (by token hash) and at most `keep` in all, the most recently checked."""
        self.fast.execute(
            "INSERT INTO token_verdicts (token_sha256, role, username, email, checked_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (token_sha256) DO UPDATE SET role = excluded.role,"
            " username = excluded.username, email = excluded.email, checked_at = excluded.checked_at,"
            " expires_at = excluded.expires_at",
            (row.token_sha256, row.role, row.username, row.email, row.checked_at, row.expires_at),
        )
        self.fast.execute(
            "DELETE FROM token_verdicts WHERE token_sha256 NOT IN"
            " (SELECT token_sha256 FROM token_verdicts ORDER BY checked_at DESC LIMIT ?)",
            (keep,),
        )

    def forget_verdict(self, token_sha256: str) -> None:
        self.fast.execute("DELETE FROM token_verdicts WHERE token_sha256 = ?", (token_sha256,))

    def load_verdicts(self, limit: int) -> list[VerdictRow]:
        """The kept verdicts, the most recently checked last (at most `limit`)."""
        rows = self.fast.execute(
            "SELECT token_sha256, role, username, email, checked_at, expires_at FROM token_verdicts"
            " ORDER BY checked_at DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            VerdictRow(str(t), str(r), str(u), str(e), float(c), float(x))
            for t, r, u, e, c, x in reversed(rows)
        ]

    # -- outbox ------------------------------------------------------------------------------------
    @staticmethod
    def _insert_outbox(conn: sqlite3.Connection, item: OutboxItem) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO outbox (image_query_id, detector_id, reason, payload, image, content_type,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                item.image_query_id,
                item.detector_id,
                item.reason,
                item.payload,
                item.image,
                item.content_type,
                item.created_at,
            ),
        )

    def enqueue(self, item: OutboxItem) -> None:
        """Queue an escalation for an already-recorded query (audits), durably."""
        with _immediate(self.durable):
            self._insert_outbox(self.durable, item)

    def pending(self, limit: int, exclude: frozenset[str] = frozenset()) -> list[OutboxItem]:
        rows = self.fast.execute(
            "SELECT image_query_id, detector_id, reason, payload, image, content_type, created_at, attempts"
            " FROM outbox WHERE state = 'pending' ORDER BY created_at LIMIT ?",
            (limit + len(exclude),),
        ).fetchall()
        items = [OutboxItem(*row) for row in rows if row[0] not in exclude]
        return items[:limit]

    def ack(self, image_query_ids: list[str]) -> None:
        """The cloud has these escalations: only now may they leave the outbox (one transaction)."""
        with _immediate(self.durable):
            self.durable.executemany(
                "DELETE FROM outbox WHERE image_query_id = ?", [(i,) for i in image_query_ids]
            )

    def note_failures(self, failures: list[tuple[str, str, bool]]) -> None:
        """(image query id, error, dead) per entry the cloud did not take, in one transaction: a dead
        entry stays until re-driven, the others are sent again."""
        with _immediate(self.durable):
            self.durable.executemany(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?, state = ? WHERE image_query_id = ?",
                [(error[:500], "dead" if dead else "pending", iq) for iq, error, dead in failures],
            )

    def redrive(self, image_query_id: str | None = None) -> int:
        """Dead entries (all, or one) back to pending, for the sender's next pass; how many moved.
        Their attempt count and last error stay, so a second death is still explained."""
        sql = "UPDATE outbox SET state = 'pending' WHERE state = 'dead'"
        args: tuple[str, ...] = ()
        if image_query_id is not None:
            sql += " AND image_query_id = ?"
            args = (image_query_id,)
        return int(self.durable.execute(sql, args).rowcount)

    def depth(self) -> OutboxDepth:
        pending, dead, oldest = self.fast.execute(
            "SELECT SUM(state = 'pending'), SUM(state = 'dead'), MIN(CASE WHEN state = 'pending'"
            " THEN created_at END) FROM outbox"
        ).fetchone()
        age = None if oldest is None else max(0.0, time.time() - float(oldest))
        return OutboxDepth(int(pending or 0), int(dead or 0), age)

    # -- alert firings -----------------------------------------------------------------------------
    # No 'sent' rows: a firing the cloud recorded is deleted at once. The cloud is idempotent on
    # firing_id, so a kept copy would prevent nothing, and deleting needs no purge job.
    def add_firings(self, firings: list[StoredFiring]) -> None:
        """Keep new firings, fsynced in one transaction: on disk before the answer that fired them."""
        with _immediate(self.durable):
            self.durable.executemany(
                "INSERT OR IGNORE INTO alert_firings (firing_id, detector_id, body, created_at)"
                " VALUES (?, ?, ?, ?)",
                [(f.firing_id, f.detector_id, f.body, f.created_at) for f in firings],
            )

    def pending_firings(self, limit: int) -> list[StoredFiring]:
        """The oldest first, so a backlog reaches the cloud in the order it fired."""
        rows = self.fast.execute(
            "SELECT firing_id, detector_id, body, created_at, attempts FROM alert_firings"
            " WHERE state = 'pending' ORDER BY created_at, rowid LIMIT ?",
            (limit,),
        ).fetchall()
        return [StoredFiring(str(i), str(d), str(b), float(c), int(a)) for i, d, b, c, a in rows]

    def firings_sent(self, firing_ids: list[str]) -> None:
        """The cloud recorded these. No fsync: a delete lost to a power cut only resends, which the
        cloud recognises."""
        with _immediate(self.fast):
            self.fast.executemany("DELETE FROM alert_firings WHERE firing_id = ?", [(i,) for i in firing_ids])

    def note_firing_failures(self, failures: list[tuple[str, str, bool]]) -> None:
        """(firing id, error, dead) per firing the cloud did not record: a dead one is kept, counted and
        never sent again; the others go again."""
        with _immediate(self.fast):
            self.fast.executemany(
                "UPDATE alert_firings SET attempts = attempts + 1, last_error = ?, state = ?"
                " WHERE firing_id = ?",
                [(error[:500], "dead" if dead else "pending", i) for i, error, dead in failures],
            )

    def firing_depth(self) -> OutboxDepth:
        pending, dead, oldest = self.fast.execute(
            "SELECT SUM(state = 'pending'), SUM(state = 'dead'), MIN(CASE WHEN state = 'pending'"
            " THEN created_at END) FROM alert_firings"
        ).fetchone()
        age = None if oldest is None else max(0.0, time.time() - float(oldest))
        return OutboxDepth(int(pending or 0), int(dead or 0), age)
