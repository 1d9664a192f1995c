from __future__ import annotations

from typing import Any

from flask.views import MethodView

from app.auth.identity import current_identity
from app.openapi import Blueprint
from app.paging import Page
from app.users import service
from app.users.models import User
from app.users.schemas import (
    UserCreateSchema,
    UserPageSchema,
    UserQueryArgsSchema,
    UserSchema,
    UserUpdateSchema,
)

blp = Blueprint("users", __name__, url_prefix="/v1/users", description="User accounts (admin)")


@blp.route("")
class Users(MethodView):
    @blp.requires("user:manage")
    @blp.arguments(UserQueryArgsSchema, location="query")
    @blp.response(200, UserPageSchema)
    def get(self, args: dict[str, Any]) -> Page[User]:
        """List users, newest first."""
        return service.list_users(args["limit"], args["cursor"])

    @blp.requires("user:manage")
    @blp.arguments(UserCreateSchema)
    @blp.response(201, UserSchema)
    @blp.alt_response(409, response="CONFLICT")
    def post(self, body: dict[str, Any]) -> User:
        """Create a user with a password and roles."""
        return service.create_user(body["username"], body["password"], body["roles"])


@blp.route("/<string:user_id>")
class UserById(MethodView):
    @blp.requires("user:manage")
    @blp.response(200, UserSchema)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, user_id: str) -> User:
        """One user."""
        return service.get_user(user_id)

    @blp.requires(None)
    @blp.arguments(UserUpdateSchema)
    @blp.response(200, UserSchema)
    @blp.alt_response(403, response="FORBIDDEN")
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, response="CONFLICT")
    def patch(self, body: dict[str, Any], user_id: str) -> User:
        """Change roles, the disabled flag or the password (admin); or your own password,
        given ``current_password``."""
        return service.update_user(user_id, body, current_identity())
