"""asset lists at scale: live counts by type and status for list totals (trigger-kept deltas, as
in 0006), a partial index for the counts it does not cover, the size sort descending, the author
filter, and trigram indexes for ``q`` on PostgreSQL

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
# What a live asset adds to, or takes from, the counts (entity "asset_live").
_DELTA = (
    "INSERT INTO status_count_deltas (entity, kind, status, delta) "
    "VALUES ('asset_live', {row}.asset_type, {row}.status, {delta});"
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
    bind.execute(
        sa.text(
            "INSERT INTO status_counts (entity, kind, status, n) "
            "SELECT 'asset_live', asset_type, status, count(*) FROM assets "
            "WHERE deleted_at IS NULL GROUP BY asset_type, status"
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
    minus, plus = _DELTA.format(row="OLD", delta=-1), _DELTA.format(row="NEW", delta=1)
    op.execute(
        f"""
        CREATE FUNCTION assets_live_count() RETURNS trigger AS $$
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
        "CREATE TRIGGER assets_live_count_insert_delete AFTER INSERT OR DELETE ON assets "
        "FOR EACH ROW EXECUTE FUNCTION assets_live_count()"
    )
    op.execute(
        "CREATE TRIGGER assets_live_count_update AFTER UPDATE OF status, asset_type, deleted_at "
        "ON assets FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status "
        "OR OLD.asset_type IS DISTINCT FROM NEW.asset_type "
        "OR (OLD.deleted_at IS NULL) IS DISTINCT FROM (NEW.deleted_at IS NULL)) "
        "EXECUTE FUNCTION assets_live_count()"
    )


def _sqlite_upgrade():
    minus, plus = _DELTA.format(row="OLD", delta=-1), _DELTA.format(row="NEW", delta=1)
    op.execute(
        "CREATE TRIGGER assets_live_count_insert AFTER INSERT ON assets "
        f"WHEN NEW.deleted_at IS NULL BEGIN {plus} END"
    )
    op.execute(
        "CREATE TRIGGER assets_live_count_delete AFTER DELETE ON assets "
        f"WHEN OLD.deleted_at IS NULL BEGIN {minus} END"
    )
    changed = (
        "(OLD.status IS NOT NEW.status OR OLD.asset_type IS NOT NEW.asset_type "
        "OR (OLD.deleted_at IS NULL) IS NOT (NEW.deleted_at IS NULL))"
    )
    op.execute(
        "CREATE TRIGGER assets_live_count_update_old AFTER UPDATE OF status, asset_type, "
        f"deleted_at ON assets WHEN {changed} AND OLD.deleted_at IS NULL BEGIN {minus} END"
    )
    op.execute(
        "CREATE TRIGGER assets_live_count_update_new AFTER UPDATE OF status, asset_type, "
        f"deleted_at ON assets WHEN {changed} AND NEW.deleted_at IS NULL BEGIN {plus} END"
    )


def downgrade():
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("DROP TRIGGER assets_live_count_update ON assets")
        op.execute("DROP TRIGGER assets_live_count_insert_delete ON assets")
        op.execute("DROP FUNCTION assets_live_count()")
        for name in ("ix_assets_description_trgm", "ix_assets_name_trgm"):
            op.execute(f"DROP INDEX {name}")
        op.execute("DROP INDEX ix_assets_size_bytes_desc_id")
    else:
        for suffix in ("insert", "delete", "update_old", "update_new"):
            op.execute(f"DROP TRIGGER assets_live_count_{suffix}")
    bind.execute(sa.text("DELETE FROM status_count_deltas WHERE entity = 'asset_live'"))
    bind.execute(sa.text("DELETE FROM status_counts WHERE entity = 'asset_live'"))
    op.drop_index("ix_assets_live_author_type", table_name="assets")
    op.drop_index("ix_assets_live_type_status_compliance", table_name="assets")
