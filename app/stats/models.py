"""Counts of assets and jobs by type/kind and status, kept by database triggers (migration 0006)
so that ``/metrics`` never scans those tables.

Each change appends a delta row (no row is updated by two writers, so registrations never queue
behind one another on a counter); a scrape sums ``status_counts`` and the deltas, and folds the
deltas in now and then.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class StatusCount(Base):
    __tablename__ = "status_counts"

    entity: Mapped[str] = mapped_column(String(16), primary_key=True)  # asset | job
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)  # asset_type | job kind
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)


class StatusCountDelta(Base):
    __tablename__ = "status_count_deltas"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    entity: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    delta: Mapped[int] = mapped_column(Integer)
