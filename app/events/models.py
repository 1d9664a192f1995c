"""The outbox: each state change writes its event row in the change's own transaction
(CONTRACT.md §7). A relay publishes the rows to NATS JetStream and marks them published.

``seq`` is the feed's order. It is given at commit time, under a lock that commits take one at a
time (see ``app.events.service``), so sequence order is commit order: once an event is visible,
every event ordered before it is visible too, and a reader paging with ``after`` never skips one.
A row whose transaction has not committed yet has no ``seq`` and nobody else can see it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, Index, Integer, String, text
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

PENDING = text("published_at IS NULL")


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_seq", "seq", unique=True),
        # What the relay reads (and /health and /metrics count): small, since published rows
        # leave it.
        Index("ix_events_pending_seq", "seq", postgresql_where=PENDING, sqlite_where=PENDING),
        Index("ix_events_asset_id_seq", "asset_id", "seq"),
        Index("ix_events_type_seq", "type", "seq"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    seq: Mapped[int | None] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(64))
    asset_id: Mapped[str | None] = mapped_column(String(26))
    data: Mapped[dict[str, Any]]
    actor: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(128))
    trace_id: Mapped[str | None] = mapped_column(String(32))
    span_id: Mapped[str | None] = mapped_column(String(16))  # the span that made the change
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    published_at: Mapped[dt.datetime | None]


class RelayState(Base):
    """One row: how many events the relays have published in all (``events_published_total``),
    kept in the database so that every API replica reports the same count."""

    __tablename__ = "event_relay_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    published_total: Mapped[int] = mapped_column(BigInteger, default=0)
    last_published_seq: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[dt.datetime | None]
