from __future__ import annotations

from typing import Any

import marshmallow as ma

from app.auth.permissions import ROLES
from app.schemas import PagingArgsSchema, StrictBoolean, UTCDateTime, page_schema

USERNAME_PATTERN = r"^[a-z0-9][a-z0-9._@-]{1,63}$"
PASSWORD_MIN = 8
PASSWORD_MAX = 1024


def _roles(**kwargs: object) -> ma.fields.List[Any]:
    return ma.fields.List(
        ma.fields.String(validate=ma.validate.OneOf(ROLES)),
        validate=ma.validate.Length(min=1, max=len(ROLES)),
        metadata={"description": f"Any of {', '.join(ROLES)}; the highest one is effective"},
        **kwargs,  # type: ignore[arg-type]
    )


def _password(**kwargs: object) -> ma.fields.String:
    return ma.fields.String(
        validate=ma.validate.Length(min=PASSWORD_MIN, max=PASSWORD_MAX),
        load_only=True,
        **kwargs,  # type: ignore[arg-type]
    )


class UserSchema(ma.Schema):
    id = ma.fields.String()
    username = ma.fields.String()
    roles = ma.fields.List(ma.fields.String())
    disabled = ma.fields.Boolean()
    created_at = UTCDateTime()
    updated_at = UTCDateTime()


class UserCreateSchema(ma.Schema):
    username = ma.fields.String(
        required=True,
        validate=ma.validate.Regexp(
            USERNAME_PATTERN, error="must be 2-64 of a-z 0-9 . _ @ -, starting alphanumeric"
        ),
    )
    password = _password(required=True)
    roles = _roles(required=True)


class UserUpdateSchema(ma.Schema):
    roles = _roles()
    disabled = StrictBoolean()
    password = _password()
    current_password = ma.fields.String(
        load_only=True, validate=ma.validate.Length(max=PASSWORD_MAX)
    )


class UserQueryArgsSchema(PagingArgsSchema):
    pass


UserPageSchema = page_schema(UserSchema, "UserPage")
