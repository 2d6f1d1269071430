"""rois on labels and image queries

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 09:00:00.000000

Boxes (common.wire.device_api.Roi lists as JSON): those that came with a label, the current answer's
on an image query (the model's, then a person's), and on a review item the query's boxes before its
answer, which an undo puts back. All nullable: older rows simply have none.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


_COLUMNS = (("labels", "rois"), ("image_queries", "rois"), ("review_items", "prior_rois"))


def upgrade() -> None:
    for table, column in _COLUMNS:
        op.add_column(table, sa.Column(column, sa.JSON(), nullable=True))


def downgrade() -> None:
    # Not batch mode: SQLite drops a column in place, where a table rebuild would cascade deletes.
    for table, column in reversed(_COLUMNS):
        op.drop_column(table, column)
