from __future__ import annotations

from typing import Any

from flask import Response
from flask.views import MethodView

from app.auth import service
from app.auth.identity import current_identity
from app.auth.schemas import LoginSchema, MeSchema, TokenSchema
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


@blp.route("/me")
class Me(MethodView):
    @blp.requires(None)
    @blp.response(200, MeSchema)
    def get(self) -> dict[str, Any]:
        """The authenticated caller, with roles as assigned and permissions expanded."""
        identity = current_identity()
        return service.describe(identity.user_id, identity.username, identity.roles)


@blp.after_request
def _no_store(response: Response) -> Response:
    # Tokens and identities must never sit in a shared or browser cache.
    response.headers["Cache-Control"] = "no-store"
    return response
