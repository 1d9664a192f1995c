"""Who is calling: resolve the request's credentials to an Identity, once per request.

Roles and the disabled flag are read on every request (from the read cache, which every change
to a user drops, else from the database), so a demotion or a disable takes effect at once.
Credentials: ``Authorization: Bearer <jwt or api key>`` or ``X-API-Key: <api key>``; a JWT whose
login was logged out (its token family revoked) is refused.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import jwt as pyjwt
import orjson
from flask import current_app, g, request
from flask_jwt_extended.exceptions import JWTExtendedException
from jwt import PyJWTError
from werkzeug.datastructures import Headers

from app.auth.apikeys import authenticate_api_key, looks_like_api_key
from app.auth.permissions import allows, highest_role, permissions_of
from app.auth.revocation import RedisRevocationStore, revocation_store
from app.auth.signing import verify_request_signature
from app.cache import CachedEntry, ReadCache, current_read_cache, user_key
from app.context import actor_var
from app.errors import ForbiddenError, UnauthorizedError
from app.extensions import db
from app.json import json_bytes
from app.users.models import User

log = logging.getLogger(__name__)

_REQUIRED_CLAIMS = ("sub", "exp", "iat", "jti")


@dataclasses.dataclass(frozen=True)
class Identity:
    user_id: str
    username: str
    role: str
    roles: tuple[str, ...]
    permissions: frozenset[str]
    kind: str = "user"  # "user" (JWT) or "apikey"
    token_jti: str | None = None
    family: str | None = None  # the login a JWT belongs to
    token_exp: int | None = None
    api_key_id: str | None = None

    def can(self, permission: str) -> bool:
        return allows(self.permissions, permission)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def _credential() -> str | None:
    headers: Headers = request._get_current_object().headers  # type: ignore[attr-defined]
    header = headers.get("Authorization")
    api_key = headers.get("X-API-Key")
    if header is None:
        if api_key is None:
            return None
        if not looks_like_api_key(api_key.strip()):
            raise UnauthorizedError("the X-API-Key header does not hold an API key")
        return api_key.strip()
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthorizedError("the Authorization header must be 'Bearer <token>'")
    return token.strip()


def _decode_access_token(token: str) -> dict[str, Any]:
    """The verified claims of ``token``: one PyJWT decode with the settings flask-jwt-extended
    issues tokens with (HS256 only, signature, ``exp``/``nbf``/``iat``, ``iss`` and ``aud``).
    ``decode_token`` would decode it three times (claims and header unverified, then verified),
    a fifth of a cached read's time.

    A client sends the same token with every request until it expires: what never changes for
    a token (its signature under this key, its issuer and audience) is checked once per process
    and remembered, the times again at every request. Revocation and the user's state are not
    part of it; they are read per request by the caller."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    config = app.config
    key = config["JWT_SECRET_KEY"]
    audience, issuer = config["JWT_DECODE_AUDIENCE"], config["JWT_DECODE_ISSUER"]
    leeway = config.get("JWT_DECODE_LEEWAY", 0)
    verified: dict[str, tuple[Any, Any, Any, dict[str, Any]]] = app.extensions.setdefault(
        "verified_access_tokens", {}
    )
    seen = verified.get(token)
    if seen is not None and seen[0] == key and seen[1] == audience and seen[2] == issuer:
        claims = seen[3]
        _check_times(claims, leeway)
        return claims
    claims = pyjwt.decode(
        token,
        key,
        algorithms=config["JWT_DECODE_ALGORITHMS"],
        audience=audience,
        issuer=issuer,
        leeway=leeway,
    )
    _keep(verified, token, (key, audience, issuer, claims))
    return claims


MEMO_KEPT = 10_000  # entries of each per-process memo below (tokens live minutes)


def _keep(memo: dict[Any, Any], key: Any, value: Any) -> None:
    """``memo[key] = value``, the memo starting over when full: that costs one decode or
    construction per caller, and keeps a process's memory bounded."""
    if len(memo) >= MEMO_KEPT:
        memo.clear()
    memo[key] = value


def _check_times(claims: dict[str, Any], leeway: float) -> None:
    """PyJWT's checks of ``exp``, ``nbf`` and ``iat`` against the clock, for a token whose
    signature was verified before."""
    now = time.time()
    exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
    if exp is not None and exp <= now - leeway:
        raise pyjwt.ExpiredSignatureError("Signature has expired")
    if nbf is not None and nbf > now + leeway:
        raise pyjwt.ImmatureSignatureError("The token is not yet valid (nbf)")
    if iat is not None and iat > now + leeway:
        raise pyjwt.ImmatureSignatureError("The token is not yet valid (iat)")


def _identity_from_jwt(token: str) -> Identity:
    try:
        claims = _decode_access_token(token)
    except (PyJWTError, JWTExtendedException, ValueError, UnicodeError):
        raise UnauthorizedError("the access token is invalid or expired") from None
    if any(claims.get(name) is None for name in _REQUIRED_CLAIMS):
        # PyJWT checks exp only when present: a token that never expires is not one we issued.
        raise UnauthorizedError("the access token is invalid or expired")
    if claims.get("type") != "access":
        raise UnauthorizedError("an access token is required")
    family = claims.get("fam")
    subject = claims["sub"]
    if not isinstance(family, str):
        raise UnauthorizedError("the access token has been revoked")
    if not isinstance(subject, str) or not subject.isalnum():
        # User ids are ULIDs; anything else (a NUL byte would even break PostgreSQL) is forged.
        raise UnauthorizedError("the access token is invalid or expired")
    revoked, user = _revoked_and_user(family, subject)
    if revoked:
        raise UnauthorizedError("the access token has been revoked")
    if user is None or user.disabled:
        raise UnauthorizedError("the access token is invalid or expired")
    # The same token of a user in the same state is the same identity: made once, not at every
    # request (it is immutable, and so is what it is made of).
    made = _IDENTITIES.get((token, user))
    if made is not None:
        return made
    role = highest_role(user.roles)
    if role is None:
        raise UnauthorizedError("the user has no role")
    identity = Identity(
        user_id=subject,
        username=user.username,
        role=role,
        roles=user.roles,
        permissions=permissions_of(role),
        token_jti=claims.get("jti"),
        family=family,
        token_exp=int(claims["exp"]),
    )
    _keep(_IDENTITIES, (token, user), identity)
    return identity


@dataclasses.dataclass(frozen=True)
class _UserState:
    username: str
    roles: tuple[str, ...]
    disabled: bool


# This process's memos (``_keep``), per token and per cached user entry.
_IDENTITIES: dict[tuple[str, _UserState], Identity] = {}
_USER_STATES: dict[bytes, _UserState] = {}


def _user_state(body: bytes) -> _UserState:
    """The user state a cache entry holds, parsed once per distinct entry."""
    state = _USER_STATES.get(body)
    if state is None:
        fields = orjson.loads(body)
        state = _UserState(fields["username"], tuple(fields["roles"]), bool(fields["disabled"]))
        _keep(_USER_STATES, body, state)
    return state


def _revoked_and_user(family: str, user_id: str) -> tuple[bool, _UserState | None]:
    """Whether the login ``family`` was revoked, and what authentication needs of the user:
    from the read cache (dropped whenever the user's row changes, from any process: a demotion
    or a disable counts at the next request), else from the database. With revocation state
    and cache on the same Redis, one round trip answers both."""
    cache = current_read_cache() or ReadCache()
    store = revocation_store()
    key = user_key(user_id)
    both = None
    if isinstance(store, RedisRevocationStore):
        both = cache.lookup_with(key, [store.family_key(family)], store.url)
    if both is not None:
        entry, token, (revoked_marker,) = both
        revoked = revoked_marker is not None
    else:  # separate stores, or the cache cannot answer: ask each (the store fails open)
        revoked = store.is_revoked(family)
        entry, token = (None, None) if revoked else cache.lookup(key)
    if revoked:
        return True, None
    if entry is not None:
        try:
            return False, _user_state(entry.body)
        except (TypeError, ValueError, KeyError):  # another version's entry: read the row
            log.warning("cache: unreadable entry for %s, reading the user from the database", key)
    user = db.session.get(User, user_id)
    if user is None:
        return False, None
    state = _UserState(user.username, tuple(user.roles), bool(user.disabled))
    cache.store(key, token, CachedEntry("", json_bytes(dataclasses.asdict(state))))
    return False, state


def _identity_from_api_key(key: str) -> Identity:
    row, owner, role = authenticate_api_key(key)
    identity = Identity(
        user_id=owner.id,
        username=owner.username,
        role=role,
        roles=tuple(owner.roles),
        permissions=permissions_of(role),
        kind="apikey",
        api_key_id=row.id,
    )
    settings = current_app.extensions["registry_settings"]
    if row.signing or settings.require_request_signing:
        verify_request_signature(row)
    return identity


def current_identity() -> Identity:
    """The authenticated caller of this request; raises ``UnauthorizedError`` (401) otherwise."""
    ctx = g._get_current_object()
    cached = ctx.get("identity")
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    token = _credential()
    if token is None:
        raise UnauthorizedError("authentication is required")
    if looks_like_api_key(token):
        identity = _identity_from_api_key(token)
    else:
        identity = _identity_from_jwt(token)
    ctx.identity = identity
    actor_var.set(identity.username)  # events and logs of this request name their actor
    return identity


def require_permission(permission: str | None) -> Identity:
    """401 without valid credentials, 403 when the caller's role lacks ``permission``."""
    identity = current_identity()
    if permission is not None and not identity.can(permission):
        raise ForbiddenError(f"the {identity.role} role lacks the {permission} permission")
    return identity
