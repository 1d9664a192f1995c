"""User accounts: creation, updates, password checks and the first admin."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.auth.identity import Identity
from app.auth.permissions import highest_role
from app.errors import ForbiddenError, UnauthorizedError, ValidationFailedError
from app.extensions import db
from app.paging import Page, SortKey, paginate
from app.users.errors import LastAdminError, UserAlreadyExistsError, UserNotFoundError
from app.users.models import User

log = logging.getLogger(__name__)

_hasher = PasswordHasher()
# Verified when the username is unknown, so both failures take the same time.
_DUMMY_HASH = _hasher.hash("not-a-real-password-but-the-same-cost")


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def authenticate(username: str, password: str) -> User:
    """The enabled user with this password; ``UnauthorizedError`` with one message otherwise.

    Called by login. Upgrades the stored hash when argon2's parameters changed (commits).
    """
    user = db.session.scalar(select(User).where(User.username == username))
    if user is None:
        _verify(_DUMMY_HASH, password)
        raise UnauthorizedError("invalid username or password")
    if not _verify(user.password_hash, password) or user.disabled:
        raise UnauthorizedError("invalid username or password")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
        db.session.commit()
    return user


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def create_user(username: str, password: str, roles: list[str]) -> User:
    """Create a user (commits). Raises ``UserAlreadyExistsError`` (409) for a taken username."""
    if db.session.scalar(select(User.id).where(User.username == username)):
        raise UserAlreadyExistsError(username)
    user = User(username=username, password_hash=hash_password(password), roles=_dedupe(roles))
    db.session.add(user)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise UserAlreadyExistsError(username) from None
    log.info("user created", extra={"user_id": user.id, "username": username})
    return user


def _dedupe(roles: list[str]) -> list[str]:
    return list(dict.fromkeys(roles))


def get_user(user_id: str) -> User:
    """The user with ``user_id``; read-only. Raises ``UserNotFoundError`` (404)."""
    user = db.session.get(User, user_id)
    if user is None:
        raise UserNotFoundError(user_id)
    return user


def list_users(limit: int, cursor: str | None) -> Page[User]:
    """One page of users, newest first (``created_at desc, id desc`` as every list, CONTRACT.md
    §1). Read-only; raises ``InvalidInputError`` (400) for a damaged or foreign cursor."""
    keys = [
        SortKey(User.created_at, lambda u: u.created_at, "datetime", descending=True),
        SortKey(User.id, lambda u: u.id, "str", descending=True),
    ]
    return paginate(
        db.session,
        select(User),
        keys,
        limit=limit,
        cursor=cursor,
        bound_to={"list": "users", "sort": "created_at", "order": "desc"},
    )


def update_user(user_id: str, changes: Mapping[str, Any], actor: Identity) -> User:
    """Apply a PATCH to a user (commits).

    Admins may change roles, the disabled flag and passwords; anyone may change their own
    password given ``current_password``. Never leaves the registry without an enabled admin
    (``LastAdminError``, 409).
    """
    is_self = user_id == actor.user_id
    # Checked before the lookup, so that a non-admin learns nothing about other accounts.
    if not actor.can("user:manage") and (
        not is_self or set(changes) - {"password", "current_password"}
    ):
        raise ForbiddenError("only an admin may change other users, roles or the disabled flag")
    if {"roles", "disabled"} & set(changes):
        _serialize_admin_changes()
    # Re-read: the caller's own row was loaded for authentication, before any lock was held.
    user = db.session.get(User, user_id, populate_existing=True)
    if user is None:
        raise UserNotFoundError(user_id)
    was_admin = _is_enabled_admin(user)
    if "password" in changes:
        if is_self:
            current = changes.get("current_password")
            if current is None:
                raise ValidationFailedError(
                    {"current_password": ["is required to change your own password"]}
                )
            if not _verify(user.password_hash, current):
                raise ValidationFailedError({"current_password": ["is not your current password"]})
        user.password_hash = hash_password(changes["password"])
    elif "current_password" in changes:
        raise ValidationFailedError({"current_password": ["is only used with password"]})
    if "roles" in changes:
        user.roles = _dedupe(changes["roles"])
    if "disabled" in changes:
        user.disabled = changes["disabled"]
    if was_admin and not _is_enabled_admin(user):
        others = db.session.scalars(
            select(User)
            .where(User.disabled.is_(False), User.id != user.id)
            .execution_options(populate_existing=True)  # the caller's row may be stale
        ).all()
        if not any(_is_enabled_admin(other) for other in others):
            db.session.rollback()
            raise LastAdminError()
    db.session.commit()
    return user


def _serialize_admin_changes() -> None:
    """Let one role or disabled-flag change at a time through (until commit), so that two
    admins demoting each other at once cannot both see the other as the remaining admin.
    SQLite already serializes writers (BEGIN IMMEDIATE); PostgreSQL takes an advisory lock."""
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(select(func.pg_advisory_xact_lock(_ADMIN_CHANGES_LOCK)))


_ADMIN_CHANGES_LOCK = 0x4C4C4D52_55534552 & 0x7FFFFFFFFFFFFFFF  # "LLMRUSER"


def _is_enabled_admin(user: User) -> bool:
    return not user.disabled and highest_role(user.roles) == "admin"


def ensure_first_admin(username: str | None, password: str | None) -> User | None:
    """Create the first admin when no user exists yet (commits); returns it, else None.

    Called at start-up with ``REGISTRY_ADMIN_USERNAME``/``REGISTRY_ADMIN_PASSWORD``. Safe when
    several processes start at once: the losers see the winner's user and do nothing.
    """
    if not username or not password:
        return None
    if db.session.scalar(select(func.count()).select_from(User)):
        return None
    try:
        return create_user(username, password, ["admin"])
    except UserAlreadyExistsError:
        return None
