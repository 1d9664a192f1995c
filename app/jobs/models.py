"""Jobs: the database record of asynchronous work (CONTRACT.md §5). Celery only carries ids."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db import Base, new_id, utcnow

JOB_KINDS = ("registration", "compliance_scan")
JOB_STATUSES = ("queued", "running", "succeeded", "failed")
STEP_STATUSES = ("pending", "running", "passed", "failed", "skipped")
REGISTRATION_STEPS = ("checksum", "dependencies", "scan", "policies", "tests")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_asset_id_created_at", "asset_id", "created_at"),
        Index("ix_jobs_status_created_at", "status", "created_at"),
        Index("ix_jobs_created_at_id", "created_at", "id"),
        Index("ix_jobs_status_heartbeat_at", "status", "heartbeat_at"),
    )

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    kind: Mapped[str] = mapped_column(String(32))
    asset_id: Mapped[str | None] = mapped_column(String(26), ForeignKey("assets.id"))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    params: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]
    created_by: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    # Lease of the worker running the job: renewed while it works; a stale one is taken over.
    worker: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[dt.datetime | None]
    enqueued_at: Mapped[dt.datetime | None]

    steps: Mapped[list[JobStep]] = relationship(
        order_by="JobStep.position",
        cascade="all, delete-orphan",
        lazy="selectin",
    )


class JobStep(Base):
    __tablename__ = "job_steps"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    detail: Mapped[str | None] = mapped_column(Text)
