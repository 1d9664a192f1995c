"""governance: test runs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 15:05:00

"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "test_runs",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("asset_id", sa.String(length=26), nullable=False),
        sa.Column("suite_id", sa.String(length=26), nullable=False),
        sa.Column("suite_name", sa.String(length=129), nullable=False),
        sa.Column("suite_version", sa.String(length=256), nullable=False),
        sa.Column("job_id", sa.String(length=26), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("gating", sa.Boolean(), nullable=False),
        sa.Column(
            "cases",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["assets.id"],
            name=op.f("fk_test_runs_asset_id_assets"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_test_runs")),
    )
    with op.batch_alter_table("test_runs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_test_runs_asset_id_started_at", ["asset_id", "started_at", "id"], unique=False
        )


def downgrade():
    with op.batch_alter_table("test_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_test_runs_asset_id_started_at")
    op.drop_table("test_runs")
