"""The one wall clock of the code: timezone-aware UTC, as the databases and the wire carry it."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def utc_stamp() -> str:
    """Now as `2026-12-03T18:09:18Z`: log lines and file names people read."""
    return utcnow().isoformat(timespec="seconds").replace("+00:00", "Z")


def as_utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; they are UTC (PostgreSQL's are aware already)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
