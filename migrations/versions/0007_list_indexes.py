"""asset lists at scale: live counts by type and status and by type and compliance for list
totals (trigger-kept deltas, as in 0006), a partial index for the counts they do not cover, the
size sort descending, the author filter, and trigram indexes for ``q`` on PostgreSQL

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 06:00:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

LIVE = sa.text("deleted_at IS NULL")
# Live (not deleted) assets counted by type and one more column: entity -> column.
LIVE_COUNTS = (("asset_live", "status"), ("live_compliance", "compliance_status"))


def _delta(entity, column, row, delta):
    return (
        "INSERT INTO status_count_deltas (entity, kind, status, delta) "
        f"VALUES ('{entity}', {row}.asset_type, {row}.{column}, {delta});"
    )


def upgrade():
    bind = op.get_bind()
    # Not in batch mode: SQLite keeps the table (and 0006's triggers on it).
    op.create_index(
        "ix_assets_live_type_status_compliance",
        "assets",
        ["asset_type", "status", "compliance_status"],
        postgresql_where=LIVE,
        sqlite_where=LIVE,
    )
    op.create_index(
        "ix_assets_live_author_type",
        "assets",
        ["provenance_author", "asset_type"],
        postgresql_where=LIVE,
        sqlite_where=LIVE,
    )
    for entity, column in LIVE_COUNTS:
        bind.execute(
            sa.text(
                "INSERT INTO status_counts (entity, kind, status, n) "  # noqa: S608
                f"SELECT '{entity}', asset_type, {column}, count(*) FROM assets "
                f"WHERE deleted_at IS NULL GROUP BY asset_type, {column}"
            )
        )
    if bind.dialect.name == "postgresql":
        _pg_upgrade()
    else:
        _sqlite_upgrade()


def _pg_upgrade():
    # Descending size with NULLs last (the list's order for sort=size_bytes&order=desc); the
    # ascending order is served by ix_assets_size_bytes_id.
    op.execute(
        "CREATE INDEX ix_assets_size_bytes_desc_id ON assets (size_bytes DESC NULLS LAST, id DESC)"
    )
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute("CREATE INDEX ix_assets_name_trgm ON assets USING gin (lower(name) gin_trgm_ops)")
    op.execute(
        "CREATE INDEX ix_assets_description_trgm ON assets "
        "USING gin (lower(coalesce(description, '')) gin_trgm_ops)"
    )
    for entity, column in LIVE_COUNTS:
        minus, plus = _delta(entity, column, "OLD", -1), _delta(entity, column, "NEW", 1)
        op.execute(
            f"""
            CREATE FUNCTION {entity}_count() RETURNS trigger AS $$
            BEGIN
                IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.deleted_at IS NULL THEN
                    {minus}
                END IF;
                IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.deleted_at IS NULL THEN
                    {plus}
                END IF;
                RETURN NULL;
            END
            $$ LANGUAGE plpgsql
            """
        )
        op.execute(
            f"CREATE TRIGGER {entity}_count_insert_delete AFTER INSERT OR DELETE ON assets "
            f"FOR EACH ROW EXECUTE FUNCTION {entity}_count()"
        )
        op.execute(
            f"CREATE TRIGGER {entity}_count_update AFTER UPDATE OF {column}, asset_type, "
            f"deleted_at ON assets FOR EACH ROW WHEN (OLD.{column} IS DISTINCT FROM "
            f"NEW.{column} OR OLD.asset_type IS DISTINCT FROM NEW.asset_type "
            "OR (OLD.deleted_at IS NULL) IS DISTINCT FROM (NEW.deleted_at IS NULL)) "
            f"EXECUTE FUNCTION {entity}_count()"
        )


def _sqlite_upgrade():
    for entity, column in LIVE_COUNTS:
        minus, plus = _delta(entity, column, "OLD", -1), _delta(entity, column, "NEW", 1)
        op.execute(
            f"CREATE TRIGGER {entity}_count_insert AFTER INSERT ON assets "
            f"WHEN NEW.deleted_at IS NULL BEGIN {plus} END"
        )
        op.execute(
            f"CREATE TRIGGER {entity}_count_delete AFTER DELETE ON assets "
            f"WHEN OLD.deleted_at IS NULL BEGIN {minus} END"
        )
        changed = (
            f"(OLD.{column} IS NOT NEW.{column} OR OLD.asset_type IS NOT NEW.asset_type "
            "OR (OLD.deleted_at IS NULL) IS NOT (NEW.deleted_at IS NULL))"
        )
        on = f"AFTER UPDATE OF {column}, asset_type, deleted_at ON assets WHEN {changed}"
        op.execute(
            f"CREATE TRIGGER {entity}_count_update_old {on} AND OLD.deleted_at IS NULL "
            f"BEGIN {minus} END"
        )
        op.execute(
            f"CREATE TRIGGER {entity}_count_update_new {on} AND NEW.deleted_at IS NULL "
            f"BEGIN {plus} END"
        )


def downgrade():
    bind = op.get_bind()
    for entity, _column in LIVE_COUNTS:
        if bind.dialect.name == "postgresql":
            op.execute(f"DROP TRIGGER {entity}_count_update ON assets")
            op.execute(f"DROP TRIGGER {entity}_count_insert_delete ON assets")
            op.execute(f"DROP FUNCTION {entity}_count()")
        else:
            for suffix in ("insert", "delete", "update_old", "update_new"):
                op.execute(f"DROP TRIGGER {entity}_count_{suffix}")
        bind.execute(sa.text(f"DELETE FROM status_count_deltas WHERE entity = '{entity}'"))
        bind.execute(sa.text(f"DELETE FROM status_counts WHERE entity = '{entity}'"))
    if bind.dialect.name == "postgresql":
        for name in ("ix_assets_description_trgm", "ix_assets_name_trgm"):
            op.execute(f"DROP INDEX {name}")
        op.execute("DROP INDEX ix_assets_size_bytes_desc_id")
    op.drop_index("ix_assets_live_author_type", table_name="assets")
    op.drop_index("ix_assets_live_type_status_compliance", table_name="assets")
