"""detector human review policy

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 19:30:00.000000

What a query that leaves human review to the detector gets (cloud.app.db.models.Detector.human_review).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "detectors", sa.Column("human_review", sa.String(length=10), nullable=False, server_default="DEFAULT")
    )


def downgrade() -> None:
    op.drop_column("detectors", "human_review")
