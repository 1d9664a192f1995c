"""Login: credentials in, a pair of signed tokens out (CONTRACT.md §2)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import current_app
from flask_jwt_extended import create_access_token, create_refresh_token

from app.auth.permissions import expanded_permissions, highest_role
from app.db import new_id
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
    user = authenticate(username, password)
    body = issue_tokens(user)
    body["user"] = {"id": user.id, "username": user.username, "roles": list(user.roles)}
    return body


def describe(user_id: str, username: str, roles: tuple[str, ...]) -> dict[str, Any]:
    """The ``/v1/auth/me`` document."""
    return {
        "id": user_id,
        "username": username,
        "roles": list(roles),
        "permissions": expanded_permissions(highest_role(list(roles))),
    }
