"""the policies and test suites in force: a partial index of the active, live governance
versions, read by every registration job (latest_active_governance)

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27 11:00:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

IN_FORCE = sa.text(
    "asset_type IN ('policy', 'test_suite') AND status = 'active' AND deleted_at IS NULL"
)


def upgrade():
    op.create_index(
        "ix_assets_governance_in_force",
        "assets",
        ["asset_type", "name", "prerelease", "version_sort"],
        postgresql_where=IN_FORCE,
        sqlite_where=IN_FORCE,
    )


def downgrade():
    op.drop_index("ix_assets_governance_in_force", table_name="assets")
