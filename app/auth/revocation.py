"""Token revocation state: revoked token families (logout, refresh-token reuse) and used refresh
tokens (rotation). In Redis when ``REDIS_URL`` is set, shared by every API replica; otherwise in
the database. Entries expire with the tokens they concern.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Protocol

from flask import current_app
from sqlalchemy import delete, select

from app.auth.models import RevokedToken
from app.db import insert_ignoring_conflicts, utcnow
from app.errors import UnavailableError

log = logging.getLogger(__name__)
_PREFIX = "llm-registry:auth:"


class RevocationStore(Protocol):
    def revoke_family(self, family: str, ttl_seconds: int) -> None:
        """Every token of the login ``family`` stops working, for ``ttl_seconds``."""

    def is_revoked(self, family: str) -> bool: ...

    def claim(self, key: str, ttl_seconds: int) -> bool:
        """Mark ``key`` (a refresh token's jti, a request signature) used for ``ttl_seconds``;
        True only for the first caller."""


class RedisRevocationStore:
    def __init__(self, url: str) -> None:
        import redis

        self.url = url
        self.client: Any = redis.Redis.from_url(
            url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30
        )

    @staticmethod
    def family_key(family: str) -> str:
        """The key that exists while ``family`` is revoked (read along with the user's cache
        entry, in the same round trip, on the hot path)."""
        return f"{_PREFIX}family:{family}"

    def revoke_family(self, family: str, ttl_seconds: int) -> None:
        from app.cache import forget_locally

        try:
            self.client.set(self.family_key(family), 1, ex=max(1, ttl_seconds))
        except Exception as exc:
            raise UnavailableError("revocation state (Redis) is unavailable") from exc
        # The hot path's tracked readers hear of it from Redis; this process's at once.
        forget_locally([self.family_key(family)])

    def is_revoked(self, family: str) -> bool:
        try:
            return bool(self.client.exists(self.family_key(family)))
        except Exception as exc:
            # Failing open keeps the API up while Redis is down; a logout made meanwhile could
            # not have been recorded either (it answers 503).
            log.warning("revocation check skipped, Redis is unavailable: %s", type(exc).__name__)
            return False

    def claim(self, key: str, ttl_seconds: int) -> bool:
        try:
            return bool(self.client.set(f"{_PREFIX}used:{key}", 1, nx=True, ex=max(1, ttl_seconds)))
        except Exception as exc:
            raise UnavailableError("revocation state (Redis) is unavailable") from exc


class DatabaseRevocationStore:
    """The embedded default. Each call runs in the request's session and commits its write."""

    def __init__(self, session_factory: Any) -> None:
        self._session = session_factory

    def _expires(self, ttl_seconds: int) -> dt.datetime:
        return utcnow() + dt.timedelta(seconds=max(1, ttl_seconds))

    def revoke_family(self, family: str, ttl_seconds: int) -> None:
        session = self._session()
        insert_ignoring_conflicts(
            session,
            RevokedToken,
            ["key"],
            key=f"family:{family}",
            expires_at=self._expires(ttl_seconds),
        )
        session.execute(delete(RevokedToken).where(RevokedToken.expires_at < utcnow()))
        session.commit()

    def is_revoked(self, family: str) -> bool:
        found = self._session().scalar(
            select(RevokedToken.expires_at).where(RevokedToken.key == f"family:{family}")
        )
        return found is not None and found > utcnow()

    def claim(self, key: str, ttl_seconds: int) -> bool:
        from sqlalchemy.dialects import postgresql, sqlite

        session = self._session()
        insert = (
            postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        )
        # Of concurrent claims exactly one inserts the row, and only it gets the key back. One
        # statement, and it must stay one: a signed GET claims in autocommit (app.db).
        claimed = session.execute(
            insert(RevokedToken)
            .values(key=f"used:{key}", expires_at=self._expires(ttl_seconds))
            .on_conflict_do_nothing(index_elements=["key"])
            .returning(RevokedToken.key)
        ).scalar()
        session.commit()
        return claimed is not None


def make_revocation_store(redis_url: str | None) -> RevocationStore:
    if redis_url:
        return RedisRevocationStore(redis_url)
    from app.extensions import db

    return DatabaseRevocationStore(lambda: db.session)


def revocation_store() -> RevocationStore:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    store: RevocationStore = app.extensions["revocation_store"]
    return store
