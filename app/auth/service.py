"""Login, refresh-token rotation and logout (CONTRACT.md §2)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from flask import current_app
from flask_jwt_extended import create_access_token, create_refresh_token, decode_token
from flask_jwt_extended.exceptions import JWTExtendedException
from jwt import PyJWTError

from app.auth.permissions import expanded_permissions, highest_role
from app.auth.revocation import revocation_store
from app.db import new_id
from app.errors import UnauthorizedError
from app.extensions import db
from app.ratelimit import check_login_attempts, record_login_failure
from app.users.models import User
from app.users.service import authenticate

REFRESH_LIFETIME = dt.timedelta(days=7)


def issue_tokens(user: User, family: str | None = None) -> dict[str, Any]:
    """A new access/refresh pair for ``user``. Both carry the login's ``fam`` (token family) so a
    later logout or a refresh-token reuse can revoke every token of that login at once."""
    family = family or new_id()
    lifetime = int(current_app.config["JWT_ACCESS_TOKEN_EXPIRES"].total_seconds())
    claims = {"fam": family}
    return {
        "access_token": create_access_token(identity=user.id, additional_claims=claims),
        "refresh_token": create_refresh_token(identity=user.id, additional_claims=claims),
        "token_type": "Bearer",
        "expires_in": lifetime,
    }


def login(username: str, password: str) -> dict[str, Any]:
    """Check the credentials and issue tokens; ``UnauthorizedError`` (401) on any failure."""
    check_login_attempts(username)
    try:
        user = authenticate(username, password)
    except UnauthorizedError:
        record_login_failure(username)
        raise
    body = issue_tokens(user)
    body["user"] = {"id": user.id, "username": user.username, "roles": list(user.roles)}
    return body


def describe(
    user_id: str, username: str, roles: tuple[str, ...], effective_role: str | None = None
) -> dict[str, Any]:
    """The ``/v1/auth/me`` document: roles as assigned, permissions of the role the caller acts
    with (an API key's may be lower than its owner's)."""
    return {
        "id": user_id,
        "username": username,
        "roles": list(roles),
        "permissions": expanded_permissions(effective_role or highest_role(list(roles))),
    }


def refresh(refresh_token: str) -> dict[str, Any]:
    """Exchange a refresh token for a new pair of the same login; the presented one is used up.
    Presenting a used one revokes the whole login (every token of its family) and answers 401,
    as do an expired, forged or revoked token and a disabled user."""
    invalid = UnauthorizedError("the refresh token is invalid, expired or revoked")
    try:
        claims = decode_token(refresh_token)
    except (PyJWTError, JWTExtendedException, ValueError, UnicodeError):
        raise invalid from None
    family, jti, subject, exp = (claims.get(k) for k in ("fam", "jti", "sub", "exp"))
    if (
        claims.get("type") != "refresh"
        or not isinstance(family, str)
        or not isinstance(jti, str)
        or not isinstance(subject, str)
    ):
        raise invalid
    store = revocation_store()
    if store.is_revoked(family):
        raise invalid
    remaining = max(1, int(exp) - int(time.time())) if isinstance(exp, int) else 1
    if not store.claim(f"refresh:{jti}", remaining):
        # Someone holds a copy of a token that was already rotated: end the whole login.
        store.revoke_family(family, int(REFRESH_LIFETIME.total_seconds()))
        raise UnauthorizedError("this refresh token was already used; the login is revoked")
    user = db.session.get(User, subject) if subject.isalnum() else None
    if user is None or user.disabled or highest_role(user.roles) is None:
        raise invalid
    return issue_tokens(user, family)


def logout(family: str | None) -> None:
    """Revoke every access and refresh token of the login ``family`` (None: an API key, which
    logout leaves alone)."""
    if family is not None:
        revocation_store().revoke_family(family, int(REFRESH_LIFETIME.total_seconds()))
