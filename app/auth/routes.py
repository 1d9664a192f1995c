from __future__ import annotations

from typing import Any

from flask import Response
from flask.views import MethodView

from app.auth import apikeys, service
from app.auth.identity import current_identity
from app.auth.schemas import (
    ApiKeyCreatedSchema,
    ApiKeyCreateSchema,
    ApiKeyPageSchema,
    LoginSchema,
    MeSchema,
    RefreshSchema,
    TokenSchema,
)
from app.openapi import Blueprint

blp = Blueprint("auth", __name__, url_prefix="/v1/auth", description="Login and the caller")


@blp.route("/login")
class Login(MethodView):
    @blp.doc(security=[])
    @blp.arguments(LoginSchema)
    @blp.response(200, TokenSchema)
    @blp.alt_response(401, response="UNAUTHORIZED")
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Exchange a username and password for an access and a refresh token."""
        return service.login(body["username"], body["password"])


@blp.route("/refresh")
class Refresh(MethodView):
    @blp.doc(security=[])
    @blp.arguments(RefreshSchema)
    @blp.response(200, TokenSchema)
    @blp.alt_response(401, response="UNAUTHORIZED")
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Rotate a refresh token: a new access and refresh token of the same login. Each
        refresh token works once; presenting a used one revokes the whole login."""
        return service.refresh(body["refresh_token"])


@blp.route("/logout")
class Logout(MethodView):
    @blp.requires(None)
    @blp.response(204)
    def post(self) -> None:
        """End this login: every access and refresh token of it stops working at once. With an
        API key, changes nothing (revoke keys with DELETE /v1/auth/api-keys/{id})."""
        service.logout(current_identity().family)


@blp.route("/api-keys")
class ApiKeys(MethodView):
    @blp.requires("apikey:create")
    @blp.arguments(ApiKeyCreateSchema)
    @blp.response(201, ApiKeyCreatedSchema)
    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        """Issue an API key (``llmr_...``), shown once, stored only hashed. Its role defaults to
        yours and may not be above it; ``signing: true`` also issues a signing secret, and every
        request with the key must then be signed."""
        identity = current_identity()
        row, key, secret = apikeys.create_api_key(
            identity.user_id,
            identity.role,
            body["name"],
            body.get("role"),
            body.get("expires_in_days"),
            body["signing"],
        )
        return apikeys.describe_key(row, key=key, signing_secret=secret)

    @blp.requires(None)
    @blp.response(200, ApiKeyPageSchema)
    def get(self) -> dict[str, Any]:
        """Your API keys (never their secrets), newest first, with when each was last used."""
        rows = apikeys.list_api_keys(current_identity().user_id)
        items = [apikeys.describe_key(row) for row in rows]
        return {"items": items, "total": len(items), "limit": len(items), "next_cursor": None}


@blp.route("/api-keys/<string:key_id>")
class ApiKeyById(MethodView):
    @blp.requires(None)
    @blp.response(204)
    @blp.alt_response(404, response="NOT_FOUND")
    def delete(self, key_id: str) -> None:
        """Revoke one of your API keys (an admin may revoke anyone's): it stops working at once."""
        identity = current_identity()
        apikeys.revoke_api_key(identity.user_id, key_id, as_admin=identity.is_admin)


@blp.route("/me")
class Me(MethodView):
    @blp.requires(None)
    @blp.response(200, MeSchema)
    def get(self) -> dict[str, Any]:
        """The authenticated caller, with roles as assigned and permissions expanded."""
        identity = current_identity()
        return service.describe(identity.user_id, identity.username, identity.roles, identity.role)


@blp.after_request
def _no_store(response: Response) -> Response:
    # Tokens and identities must never sit in a shared or browser cache.
    response.headers["Cache-Control"] = "no-store"
    return response
