"""The edge's SQLite store: a database made before images were hashed opens and keeps working, and
records carry what a retry must match."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from edge.api.core.store import EdgeStore

OLD_SCHEMA = """
CREATE TABLE image_queries (
    id TEXT PRIMARY KEY,
    request_id TEXT UNIQUE,
    detector_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    body TEXT NOT NULL
);
INSERT INTO image_queries VALUES ('iq_old', 'req_old', 'det_a', 0, '{"old": true}');
"""


def test_an_older_database_gains_the_image_hash_and_keeps_its_records(tmp_path: Path) -> None:
    path = tmp_path / "edge.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)

    async def scenario() -> None:
        store = EdgeStore(path)
        await store.open()
        try:
            (old,) = store.lookup_records("iq_old", None)
            assert old.image_sha256 is None and old.request_key == "req_old" and old.detector_id == "det_a"
            await store.run(lambda: store.record_query("iq_new", "req_new", "det_a", "f" * 64, "{}", None))
            found = store.lookup_records("iq_new", "req_old")
            assert [(r.image_query_id, r.image_sha256) for r in found] == [
                ("iq_new", "f" * 64),
                ("iq_old", None),
            ]
            assert store.lookup_query("iq_missing") is None
        finally:
            await store.close()

    async def reopen() -> None:
        store = EdgeStore(path)
        await store.open()
        try:
            assert store.lookup_query("iq_new") == "{}"
        finally:
            await store.close()

    asyncio.run(scenario())
    asyncio.run(reopen())  # the added column is found, not added twice
