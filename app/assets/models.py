"""Assets, their names, tags and dependency edges (CONTRACT.md §4)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, new_id, utcnow

ASSET_TYPES = ("model", "pipeline", "dataset", "policy", "test_suite")
GOVERNANCE_TYPES = ("policy", "test_suite")  # need policy:write
STATUSES = ("pending", "validating", "active", "rejected", "deprecated", "archived")
COMPLIANCE_STATUSES = ("compliant", "warning", "non_compliant", "unknown")
CHECKSUM_ALGORITHMS = ("SHA256", "SHA3_256", "BLAKE3")
LIVE = text("deleted_at IS NULL")  # not soft-deleted: what reads and lists show
DELETED = text("deleted_at IS NOT NULL")
# The versions a policy or test-suite run may pick (see latest_active_governance): few rows in
# any registry, so every job's read of what is in force walks a tiny index, whatever the stats.
GOVERNANCE_IN_FORCE = text(
    "asset_type IN ('policy', 'test_suite') AND status = 'active' AND deleted_at IS NULL"
)
# Made by migration 0007 on PostgreSQL only (an ordering SQLite indexes cannot declare, and
# pg_trgm GIN indexes on expressions): autogenerate leaves them alone (migrations/env.py).
PG_ONLY_INDEXES = frozenset(
    {"ix_assets_size_bytes_desc_id", "ix_assets_name_trgm", "ix_assets_description_trgm"}
)


def include_in_autogenerate(obj: Any, name: str | None, type_: str, *_: Any) -> bool:
    """Alembic's ``include_object``: everything but the PostgreSQL-only indexes."""
    return not (type_ == "index" and name in PG_ONLY_INDEXES)


class AssetName(Base):
    """One row per name ever registered: pins the name's asset type (first version wins) and
    serialises concurrent first registrations of a name through its primary key."""

    __tablename__ = "asset_names"

    name: Mapped[str] = mapped_column(String(129), primary_key=True)
    asset_type: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Asset(Base):
    __tablename__ = "assets"
    __table_args__ = (
        # Unique forever, deleted and rejected versions included; build metadata is not part of it.
        UniqueConstraint("name", "version_key"),
        Index("ix_assets_created_at_id", "created_at", "id"),
        Index("ix_assets_updated_at_id", "updated_at", "id"),
        Index("ix_assets_name_version_sort", "name", "version_sort"),
        Index("ix_assets_version_sort_id", "version_sort", "id"),
        Index("ix_assets_size_bytes_id", "size_bytes", "id"),
        Index("ix_assets_asset_type_created_at", "asset_type", "created_at"),
        Index("ix_assets_status_created_at", "status", "created_at"),
        Index("ix_assets_compliance_status_created_at", "compliance_status", "created_at"),
        Index("ix_assets_provenance_author", "provenance_author"),
        Index("ix_assets_created_by", "created_by"),
        # Counts and filters over live assets (the lists' totals); on PostgreSQL migration 0007
        # also adds (size_bytes DESC NULLS LAST, id DESC) and trigram indexes for ``q``.
        Index(
            "ix_assets_live_type_status_compliance",
            "asset_type",
            "status",
            "compliance_status",
            postgresql_where=LIVE,
            sqlite_where=LIVE,
        ),
        Index(
            "ix_assets_live_author_type",
            "provenance_author",
            "asset_type",
            postgresql_where=LIVE,
            sqlite_where=LIVE,
        ),
        # The deleted assets (few): a list by one tag counts its tag's rows less these (0009).
        Index("ix_assets_deleted_id", "id", postgresql_where=DELETED, sqlite_where=DELETED),
        Index(
            "ix_assets_governance_in_force",
            "asset_type",
            "name",
            "prerelease",
            "version_sort",
            postgresql_where=GOVERNANCE_IN_FORCE,
            sqlite_where=GOVERNANCE_IN_FORCE,
        ),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    asset_type: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(ForeignKey("asset_names.name"))
    version: Mapped[str] = mapped_column(String(256))
    version_key: Mapped[str] = mapped_column(String(256))
    version_sort: Mapped[bytes] = mapped_column(LargeBinary)
    prerelease: Mapped[bool] = mapped_column(Boolean)
    description: Mapped[str | None] = mapped_column(Text)
    license: Mapped[str | None] = mapped_column(String(256))
    annotations: Mapped[dict[str, Any]]
    content_type: Mapped[str | None] = mapped_column(String(255))
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    checksum_algorithm: Mapped[str | None] = mapped_column(String(16))
    checksum_value: Mapped[str | None] = mapped_column(String(128))
    storage_uri: Mapped[str | None] = mapped_column(Text)
    provenance: Mapped[dict[str, Any] | None]
    provenance_author: Mapped[str | None] = mapped_column(String(256))
    spec: Mapped[dict[str, Any] | None]
    artifact: Mapped[dict[str, Any] | None]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    rejection: Mapped[dict[str, Any] | None]
    compliance_status: Mapped[str] = mapped_column(String(16), default="unknown")
    compliance: Mapped[dict[str, Any] | None]
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    deprecated_at: Mapped[dt.datetime | None]
    deleted_at: Mapped[dt.datetime | None]
    deleted_by: Mapped[str | None] = mapped_column(String(64))
    # Bumped by every change; the ETag, and the optimistic lock of concurrent updates.
    row_version: Mapped[int] = mapped_column(Integer, default=1)

    tag_rows: Mapped[list[AssetTag]] = relationship(
        order_by="AssetTag.position", cascade="all, delete-orphan", lazy="selectin"
    )
    dependency_rows: Mapped[list[AssetDependency]] = relationship(
        foreign_keys="AssetDependency.asset_id",
        order_by="AssetDependency.position",
        cascade="all, delete-orphan",
        lazy="selectin",
    )

    __mapper_args__ = {"version_id_col": row_version}

    @property
    def tags(self) -> list[str]:
        return [row.tag for row in self.tag_rows]

    @property
    def etag(self) -> str:
        return f'"{self.id}.{self.row_version}"'


class AssetTag(Base):
    __tablename__ = "asset_tags"
    __table_args__ = (Index("ix_asset_tags_tag_asset_id", "tag", "asset_id"),)

    asset_id: Mapped[str] = mapped_column(
        ForeignKey("assets.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)


class AssetDependency(Base):
    """A declared dependency and, once the pipeline resolved it, the version it is locked to."""

    __tablename__ = "asset_dependencies"
    __table_args__ = (Index("ix_asset_dependencies_resolved_id", "resolved_id"),)

    asset_id: Mapped[str] = mapped_column(
        ForeignKey("assets.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    ref_id: Mapped[str | None] = mapped_column(String(26))  # an {id} reference
    name: Mapped[str | None] = mapped_column(String(129))
    asset_type: Mapped[str | None] = mapped_column(String(32))
    version_range: Mapped[str | None] = mapped_column(String(256))
    resolved_id: Mapped[str | None] = mapped_column(ForeignKey("assets.id"))
    resolved_version: Mapped[str | None] = mapped_column(String(256))
