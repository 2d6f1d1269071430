"""image_queries.image_sha256

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 09:00:00.000000

A repeat of an image query (same X-Request-Id or image_query_id, from a client retry or an edge's
outbox) must carry the same image as the first; the sha256 of its bytes is kept to tell. Rows from
before stay NULL and are matched on their detector alone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("image_queries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("image_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("image_queries", schema=None) as batch_op:
        batch_op.drop_column("image_sha256")
