"""Assertions and shortcuts shared by the test modules."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from sqlalchemy import update

from app.assets.models import Asset
from app.extensions import db


def problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """Assert ``response`` is the problem+json of ``status`` with ``code``; return its body."""
    assert response.status_code == status, response.get_json()
    assert response.headers["Content-Type"] == "application/problem+json"
    doc: dict[str, Any] = response.get_json()
    assert doc["code"] == code, doc
    assert doc["status"] == status
    return doc


def set_status(asset_id: str, status: str) -> None:
    """Move an asset the way the registration pipeline would (these tests run no worker)."""
    db.session.execute(update(Asset).where(Asset.id == asset_id).values(status=status))
    db.session.commit()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def unique(size: int = 64) -> bytes:
    """Bytes no other test has stored: the store's files outlive each test's rollback."""
    seed = uuid.uuid4().bytes
    return (seed * (size // len(seed) + 1))[:size]
