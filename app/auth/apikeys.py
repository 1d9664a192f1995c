"""API keys (CONTRACT.md §2): ``llmr_<random>`` bearer credentials of a user, stored as a hash,
optionally bound to a signing secret that every request made with them must sign with."""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import secrets
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flask import current_app
from sqlalchemy import select, update

from app.auth.models import ApiKey
from app.auth.permissions import ROLES, highest_role, lower_role
from app.db import utcnow
from app.errors import ForbiddenError, NotFoundError, UnauthorizedError
from app.extensions import db
from app.users.models import User

KEY_PREFIX = "llmr_"
PREFIX_LENGTH = 12
# last_used_at is written at most this often per key, not on every request.
LAST_USED_RESOLUTION = dt.timedelta(seconds=60)


class ApiKeyNotFoundError(NotFoundError):
    def __init__(self, key_id: str) -> None:
        super().__init__(f"no API key {key_id!r} of yours")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def looks_like_api_key(credential: str) -> bool:
    return credential.startswith(KEY_PREFIX) and "." not in credential


@functools.cache
def _fernet(jwt_secret: str) -> Fernet:
    key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=None,
        info=b"llm-registry api-key signing secrets v1",
    ).derive(jwt_secret.encode())
    return Fernet(base64.urlsafe_b64encode(key))


def _cipher() -> Fernet:
    return _fernet(str(current_app.config["JWT_SECRET_KEY"]))


def signing_secret_of(key: ApiKey) -> str | None:
    """The key's signing secret in the clear (None when it has none or cannot be decrypted,
    e.g. after ``JWT_SECRET`` was rotated: such a key must be re-issued)."""
    if not key.signing_secret_encrypted:
        return None
    try:
        return _cipher().decrypt(key.signing_secret_encrypted.encode()).decode()
    except InvalidToken:
        return None


def create_api_key(
    owner_id: str,
    owner_role: str,
    name: str,
    role: str | None = None,
    expires_in_days: int | None = None,
    signing: bool = False,
) -> tuple[ApiKey, str, str | None]:
    """Issue a key for the caller; commits. Returns (row, key, signing secret), the last two to
    be shown once. The key's role defaults to the owner's; one above it → ``ForbiddenError``."""
    role = role or owner_role
    if role not in ROLES:
        raise ForbiddenError(f"unknown role {role!r}")
    if ROLES.index(role) > ROLES.index(owner_role):
        raise ForbiddenError(f"a {owner_role} cannot issue a key with the {role} role")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    signing_secret = secrets.token_hex(32) if signing else None
    row = ApiKey(
        user_id=owner_id,
        name=name,
        prefix=key[:PREFIX_LENGTH],
        key_hash=hash_key(key),
        role=role,
        signing=signing,
        signing_secret_encrypted=(
            _cipher().encrypt(signing_secret.encode()).decode() if signing_secret else None
        ),
        expires_at=utcnow() + dt.timedelta(days=expires_in_days) if expires_in_days else None,
    )
    db.session.add(row)
    db.session.commit()
    return row, key, signing_secret


def list_api_keys(owner_id: str) -> list[ApiKey]:
    """The caller's keys that are not revoked, newest first (expired ones included)."""
    return list(
        db.session.scalars(
            select(ApiKey)
            .where(ApiKey.user_id == owner_id, ApiKey.revoked_at.is_(None))
            .order_by(ApiKey.created_at.desc(), ApiKey.id.desc())
        )
    )


def revoke_api_key(owner_id: str, key_id: str, as_admin: bool = False) -> None:
    """Revoke one of the caller's keys (an admin may revoke anyone's); commits. Idempotent for a
    key already revoked; ``ApiKeyNotFoundError`` for a key that is not the caller's."""
    row = db.session.get(ApiKey, key_id) if len(key_id) <= 26 else None
    if row is None or (row.user_id != owner_id and not as_admin):
        raise ApiKeyNotFoundError(key_id)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        db.session.commit()


def authenticate_api_key(key: str) -> tuple[ApiKey, User, str]:
    """(key row, owner, effective role) for a presented key; ``UnauthorizedError`` when it is
    unknown, revoked, expired or its owner is disabled. The role is the lower of the key's and
    the owner's current one."""
    row = db.session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    now = utcnow()
    if row is None or row.revoked_at is not None or (row.expires_at and row.expires_at <= now):
        raise UnauthorizedError("the API key is invalid, expired or revoked")
    owner = db.session.get(User, row.user_id)
    owner_role = highest_role(owner.roles) if owner else None
    if owner is None or owner.disabled or owner_role is None:
        raise UnauthorizedError("the API key is invalid, expired or revoked")
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        db.session.execute(
            update(ApiKey)
            .where(ApiKey.id == row.id)
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
        db.session.commit()
        row.last_used_at = now
    return row, owner, lower_role(row.role, owner_role)


def describe_key(row: ApiKey, **shown_once: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "id": row.id,
        "name": row.name,
        "prefix": row.prefix,
        "role": row.role,
        "signing": row.signing,
        "created_at": row.created_at,
        "expires_at": row.expires_at,
        "last_used_at": row.last_used_at,
    }
    doc.update({k: v for k, v in shown_once.items() if v is not None})
    return doc
