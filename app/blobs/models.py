"""What the registry knows of the blobs in its store (the bytes live in the store itself)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, utcnow


class Blob(Base):
    __tablename__ = "blobs"

    digest: Mapped[str] = mapped_column(String(71), primary_key=True)  # "sha256:<hex>"
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    uri: Mapped[str] = mapped_column(String(2048))
    created_by: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
