"""API keys and token revocation state (CONTRACT.md §2)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Boolean, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, new_id, utcnow


class ApiKey(Base):
    """A long-lived credential of a user. Only the SHA-256 of the key is kept (the key is 32
    random bytes, so a fast hash is as good as a slow one); the signing secret, which HMAC needs
    in the clear, is kept encrypted."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_user_id_created_at", "user_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(12))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    signing: Mapped[bool] = mapped_column(Boolean, default=False)
    signing_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime | None]
    revoked_at: Mapped[dt.datetime | None]
    last_used_at: Mapped[dt.datetime | None]


class RevokedToken(Base):
    """Revocation state when no Redis is configured: revoked token families and used refresh
    tokens, each kept until the tokens it concerns have expired anyway. In the database, not in
    one process, so every server process of the embedded default sees a logout at once."""

    __tablename__ = "revoked_tokens"
    __table_args__ = (Index("ix_revoked_tokens_expires_at", "expires_at"),)

    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
