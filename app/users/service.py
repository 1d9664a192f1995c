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
    user = db.session.get(User, user_id)
    if user is None:
        raise UserNotFoundError(user_id)
    return user


def list_users(limit: int, cursor: str | None) -> Page[User]:
    keys = [
        SortKey(User.created_at, lambda u: u.created_at, "datetime"),
        SortKey(User.id, lambda u: u.id, "str"),
    ]
    return paginate(db.session, select(User), keys, limit=limit, cursor=cursor, bound_to={})


def update_user(user_id: str, changes: Mapping[str, Any], actor: Identity) -> User:
    """Apply a PATCH to a user (commits).

    Admins may change roles, the disabled flag and passwords; anyone may change their own
    password given ``current_password``. Never leaves the registry without an enabled admin
    (``LastAdminError``, 409).
    """
    user = get_user(user_id)
    is_self = user.id == actor.user_id
    if not actor.can("user:manage") and (
        not is_self or set(changes) - {"password", "current_password"}
    ):
        raise ForbiddenError("only an admin may change other users, roles or the disabled flag")
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
            select(User).where(User.disabled.is_(False), User.id != user.id)
        ).all()
        if not any(_is_enabled_admin(other) for other in others):
            db.session.rollback()
            raise LastAdminError()
    db.session.commit()
    return user


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
