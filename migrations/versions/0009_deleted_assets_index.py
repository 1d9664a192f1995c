"""the deleted assets: a partial index of their ids, so that a list filtered by one tag counts
its total from the tag's index less its deleted assets (few) instead of looking up every
tagged asset (list_assets)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28 11:30:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

DELETED = sa.text("deleted_at IS NOT NULL")


def upgrade():
    op.create_index(
        "ix_assets_deleted_id",
        "assets",
        ["id"],
        postgresql_where=DELETED,
        sqlite_where=DELETED,
    )


def downgrade():
    op.drop_index("ix_assets_deleted_id", table_name="assets")
