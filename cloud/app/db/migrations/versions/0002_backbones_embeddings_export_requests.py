"""backbones, image embeddings, export requests

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 21:55:19.356417

Also creates `fk_detector_production` on PostgreSQL: 0001 declared it with use_alter inside
create_table, which Alembic leaves out, so the alias was never enforced there. (SQLite creates it
with the table.)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    op.create_table(
        "backbones",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("ref", sa.JSON(), nullable=False),
        sa.Column("blob_key", sa.String(length=300), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256"),
    )
    op.create_table(
        "image_embeddings",
        sa.Column("image_query_id", sa.String(length=120), nullable=False),
        sa.Column("backbone_sha256", sa.String(length=64), nullable=False),
        sa.Column("dim", sa.Integer(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["backbone_sha256"], ["backbones.sha256"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["image_query_id"], ["image_queries.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("image_query_id", "backbone_sha256"),
    )
    with op.batch_alter_table("export_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("backbone_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("images", sa.String(length=10), nullable=True))
    if _postgres():
        op.create_foreign_key(
            "fk_detector_production", "detectors", "model_versions", ["production_version_id"], ["id"]
        )


def downgrade() -> None:
    if _postgres():
        op.drop_constraint("fk_detector_production", "detectors", type_="foreignkey")
    with op.batch_alter_table("export_jobs", schema=None) as batch_op:
        batch_op.drop_column("images")
        batch_op.drop_column("backbone_sha256")
    op.drop_table("image_embeddings")
    op.drop_table("backbones")
