from __future__ import annotations

import marshmallow as ma

from app.auth.permissions import ROLES
from app.schemas import StrictBoolean, UTCDateTime, page_schema


class LoginSchema(ma.Schema):
    username = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=64))
    password = ma.fields.String(
        required=True, load_only=True, validate=ma.validate.Length(min=1, max=1024)
    )


class LoginUserSchema(ma.Schema):
    id = ma.fields.String()
    username = ma.fields.String()
    roles = ma.fields.List(ma.fields.String())


class TokenSchema(ma.Schema):
    access_token = ma.fields.String()
    refresh_token = ma.fields.String()
    token_type = ma.fields.String(metadata={"example": "Bearer"})
    expires_in = ma.fields.Integer(metadata={"description": "Access token lifetime in seconds"})
    user = ma.fields.Nested(LoginUserSchema)


class MeSchema(ma.Schema):
    id = ma.fields.String()
    username = ma.fields.String()
    roles = ma.fields.List(ma.fields.String())
    permissions = ma.fields.List(ma.fields.String())


class RefreshSchema(ma.Schema):
    refresh_token = ma.fields.String(
        required=True, load_only=True, validate=ma.validate.Length(min=1, max=4096)
    )


class ApiKeyCreateSchema(ma.Schema):
    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=100))
    role = ma.fields.String(validate=ma.validate.OneOf(ROLES))
    expires_in_days = ma.fields.Integer(validate=ma.validate.Range(min=1, max=3650))
    signing = StrictBoolean(load_default=False)


class ApiKeySchema(ma.Schema):
    id = ma.fields.String()
    name = ma.fields.String()
    prefix = ma.fields.String(metadata={"description": "The key's first 12 characters"})
    role = ma.fields.String()
    signing = ma.fields.Boolean(metadata={"description": "Requests must be signed"})
    created_at = UTCDateTime()
    expires_at = UTCDateTime(allow_none=True)
    last_used_at = UTCDateTime(
        allow_none=True, metadata={"description": "To the minute: not written on every request"}
    )


class ApiKeyCreatedSchema(ApiKeySchema):
    key = ma.fields.String(metadata={"description": "Shown once; store it now"})
    signing_secret = ma.fields.String(
        metadata={"description": "Shown once, with signing: true; HMAC key for X-Signature"}
    )


ApiKeyPageSchema = page_schema(ApiKeySchema, "ApiKeyPage")
