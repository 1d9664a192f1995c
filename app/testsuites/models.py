"""Test runs: one row per test suite run against an asset (CONTRACT.md §4 ``/test-runs``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ForeignKey, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, JSONType, new_id, utcnow


class TestRun(Base):
    __tablename__ = "test_runs"
    __table_args__ = (Index("ix_test_runs_asset_id_started_at", "asset_id", "started_at", "id"),)

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    asset_id: Mapped[str] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"))
    suite_id: Mapped[str] = mapped_column(String(26))
    suite_name: Mapped[str] = mapped_column(String(129))
    suite_version: Mapped[str] = mapped_column(String(256))
    job_id: Mapped[str | None] = mapped_column(String(26))
    status: Mapped[str] = mapped_column(String(16))  # passed | failed | error
    gating: Mapped[bool]
    cases: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    __test__ = False  # not a pytest test class, whatever its name
