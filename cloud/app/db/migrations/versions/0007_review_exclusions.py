"""review exclusions

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 12:00:00.000000

Detectors a reviewer left out of "Label all queues" (cloud.app.db.models.ReviewExclusion).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "review_exclusions",
        sa.Column("user_id", sa.String(length=40), nullable=False),
        sa.Column("detector_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["detector_id"], ["detectors.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "detector_id"),
    )


def downgrade() -> None:
    op.drop_table("review_exclusions")
