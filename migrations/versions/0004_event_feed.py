"""event feed: commit-ordered sequence on events, relay state

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 17:00:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

PENDING = sa.text("published_at IS NULL")


def upgrade():
    bind = op.get_bind()
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch_op.drop_index("ix_events_published_at_id")
        batch_op.drop_index("ix_events_asset_id_id")
    # Events written before this revision take their place in creation order.
    rows = bind.execute(sa.text("SELECT id FROM events ORDER BY created_at, id")).scalars().all()
    if rows:
        bind.execute(
            sa.text("UPDATE events SET seq = :seq WHERE id = :id"),
            [{"seq": n, "id": event_id} for n, event_id in enumerate(rows, start=1)],
        )
    if bind.dialect.name == "postgresql":
        op.execute(sa.text(f"CREATE SEQUENCE events_seq START WITH {len(rows) + 1}"))
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_seq", ["seq"], unique=True)
        batch_op.create_index(
            "ix_events_pending_seq",
            ["seq"],
            unique=False,
            postgresql_where=PENDING,
            sqlite_where=PENDING,
        )
        batch_op.create_index("ix_events_asset_id_seq", ["asset_id", "seq"], unique=False)
        batch_op.create_index("ix_events_type_seq", ["type", "seq"], unique=False)

    relay_state = op.create_table(
        "event_relay_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("published_total", sa.BigInteger(), nullable=False),
        sa.Column("last_published_seq", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_relay_state")),
    )
    published = bind.execute(
        sa.text("SELECT count(*) FROM events WHERE published_at IS NOT NULL")
    ).scalar_one()
    op.bulk_insert(relay_state, [{"id": 1, "published_total": published}])


def downgrade():
    op.drop_table("event_relay_state")
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(sa.text("DROP SEQUENCE events_seq"))
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_type_seq")
        batch_op.drop_index("ix_events_asset_id_seq")
        batch_op.drop_index("ix_events_pending_seq")
        batch_op.drop_index("ix_events_seq")
        batch_op.drop_column("seq")
        batch_op.create_index("ix_events_published_at_id", ["published_at", "id"], unique=False)
        batch_op.create_index("ix_events_asset_id_id", ["asset_id", "id"], unique=False)
