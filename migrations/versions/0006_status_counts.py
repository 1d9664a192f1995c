"""status counts for /metrics (totals and trigger-written deltas of assets and jobs); the span
id of each event, for tracing

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 18:00:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# (table, entity, kind column)
COUNTED = (("assets", "asset", "asset_type"), ("jobs", "job", "kind"))


def upgrade():
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("span_id", sa.String(length=16), nullable=True))
    op.create_table(
        "status_counts",
        sa.Column("entity", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("entity", "kind", "status", name=op.f("pk_status_counts")),
    )
    op.create_table(
        "status_count_deltas",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("entity", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("delta", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_status_count_deltas")),
    )
    bind = op.get_bind()
    for table, entity, kind in COUNTED:
        bind.execute(
            sa.text(
                f"INSERT INTO status_counts (entity, kind, status, n) "  # noqa: S608
                f"SELECT '{entity}', {kind}, status, count(*) FROM {table} GROUP BY {kind}, status"
            )
        )
        if bind.dialect.name == "postgresql":
            _pg_triggers(table, entity, kind)
        else:
            _sqlite_triggers(table, entity, kind)


def _pg_triggers(table, entity, kind):
    op.execute(
        f"""
        CREATE FUNCTION {table}_status_count() RETURNS trigger AS $$
        BEGIN
            IF TG_OP IN ('UPDATE', 'DELETE') THEN
                INSERT INTO status_count_deltas (entity, kind, status, delta)
                VALUES ('{entity}', OLD.{kind}, OLD.status, -1);
            END IF;
            IF TG_OP IN ('INSERT', 'UPDATE') THEN
                INSERT INTO status_count_deltas (entity, kind, status, delta)
                VALUES ('{entity}', NEW.{kind}, NEW.status, 1);
            END IF;
            RETURN NULL;
        END
        $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        f"CREATE TRIGGER {table}_status_count_insert_delete AFTER INSERT OR DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION {table}_status_count()"
    )
    op.execute(
        f"CREATE TRIGGER {table}_status_count_update AFTER UPDATE OF status, {kind} ON {table} "
        f"FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status "
        f"OR OLD.{kind} IS DISTINCT FROM NEW.{kind}) EXECUTE FUNCTION {table}_status_count()"
    )


def _sqlite_triggers(table, entity, kind):
    plus = (
        f"INSERT INTO status_count_deltas (entity, kind, status, delta) "
        f"VALUES ('{entity}', NEW.{kind}, NEW.status, 1);"
    )
    minus = (
        f"INSERT INTO status_count_deltas (entity, kind, status, delta) "
        f"VALUES ('{entity}', OLD.{kind}, OLD.status, -1);"
    )
    op.execute(
        f"CREATE TRIGGER {table}_status_count_insert AFTER INSERT ON {table} BEGIN {plus} END"
    )
    op.execute(
        f"CREATE TRIGGER {table}_status_count_delete AFTER DELETE ON {table} BEGIN {minus} END"
    )
    op.execute(
        f"CREATE TRIGGER {table}_status_count_update AFTER UPDATE OF status, {kind} ON {table} "
        f"WHEN OLD.status IS NOT NEW.status OR OLD.{kind} IS NOT NEW.{kind} "
        f"BEGIN {minus} {plus} END"
    )


def downgrade():
    bind = op.get_bind()
    for table, _entity, _kind in COUNTED:
        if bind.dialect.name == "postgresql":
            op.execute(f"DROP TRIGGER {table}_status_count_update ON {table}")
            op.execute(f"DROP TRIGGER {table}_status_count_insert_delete ON {table}")
            op.execute(f"DROP FUNCTION {table}_status_count()")
        else:
            for suffix in ("insert", "delete", "update"):
                op.execute(f"DROP TRIGGER {table}_status_count_{suffix}")
    op.drop_table("status_count_deltas")
    op.drop_table("status_counts")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("span_id")
