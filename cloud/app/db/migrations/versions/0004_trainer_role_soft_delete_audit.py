"""trainer role, soft-deleted detectors, audit log

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 10:00:00.000000

The first start made the `trainer` service account (token only, no password) an admin; it gets the
`trainer` role, which may run training jobs and nothing else. Detectors gain the columns of a soft
deletion (the name stays unique: a deleted detector's name moves to `deleted_name`), and the
`audit_events` table records administrative changes.

SQLite never rebuilds `detectors` here, up or down: a rebuild drops the table, and with foreign keys
on that cascades into every image query.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# The account cloud.app.bootstrap creates: no password, so it was never a person's.
_TRAINER_ACCOUNT = "username = 'trainer' AND password_hash IS NULL"


def upgrade() -> None:
    op.add_column("detectors", sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("detectors", sa.Column("deleted_by", sa.String(length=40), nullable=True))
    op.add_column("detectors", sa.Column("deleted_name", sa.String(length=200), nullable=True))
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor_id", sa.String(length=40), nullable=True),
        sa.Column("actor_name", sa.String(length=100), nullable=False),
        sa.Column("actor_role", sa.String(length=20), nullable=False),
        sa.Column("action", sa.String(length=60), nullable=False),
        sa.Column("target_type", sa.String(length=40), nullable=False),
        sa.Column("target_id", sa.String(length=120), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at", "id"])
    op.create_index("ix_audit_events_target", "audit_events", ["target_type", "target_id"])
    op.execute(f"UPDATE users SET role = 'trainer' WHERE role = 'admin' AND {_TRAINER_ACCOUNT}")


def downgrade() -> None:
    op.execute(f"UPDATE users SET role = 'admin' WHERE role = 'trainer' AND {_TRAINER_ACCOUNT}")
    op.drop_index("ix_audit_events_target", table_name="audit_events")
    op.drop_index("ix_audit_events_at", table_name="audit_events")
    op.drop_table("audit_events")
    # Detectors still deleted come back as live ones under their tombstone names (their own may have
    # been taken since): restore or purge them before going down if that matters.
    for column in ("deleted_name", "deleted_by", "deleted_at"):
        op.drop_column("detectors", column)  # SQLite: ALTER TABLE DROP COLUMN, no rebuild
