"""The outbox: each state change writes its event row in the change's own transaction
(CONTRACT.md §7). A relay publishes the rows to NATS JetStream and marks them published."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, new_id, utcnow

EVENT_TYPES = (
    "asset_registered",
    "asset_validated",
    "asset_rejected",
    "asset_updated",
    "asset_status_changed",
    "asset_deleted",
    "checksum_verified",
    "checksum_failed",
    "circular_dependency_detected",
    "policy_evaluated",
    "compliance_changed",
    "test_suite_completed",
    "job_failed",
)


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_published_at_id", "published_at", "id"),
        Index("ix_events_asset_id_id", "asset_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    type: Mapped[str] = mapped_column(String(64))
    asset_id: Mapped[str | None] = mapped_column(String(26))
    data: Mapped[dict[str, Any]]
    actor: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(128))
    trace_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    published_at: Mapped[dt.datetime | None]
