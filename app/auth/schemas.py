from __future__ import annotations

import marshmallow as ma


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
